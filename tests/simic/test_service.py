"""The closed loop on a real server: simulated runs published as a Tamiyo publishes
its experience, Simic's learner service joins and learns, its candidate passes the
gate and goes out as a signed PolicyUpdate that Tamiyo's listener applies (a strictly
newer version); its telemetry is on the bus under Simic's role; after a restart it
resumes and publishes a newer version still."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import (
    METRIC_LEARNER_APPROX_KL,
    METRIC_LEARNER_CANDIDATES,
    METRIC_LEARNER_POLICY_LOSS,
    METRIC_LEARNER_REPLAY_FILL,
)
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer, Delivery, Subscription
from oona.events import BufferedEventSink
from oona.settings import OonaSettings
from oona.streams import Stream
from producers.sinks import TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyUpdateListener, PolicyUpdateTransaction
from tamiyo_bus.simic.learner import SimicLearner
from tamiyo_bus.simic.service import LearnerService
from tamiyo_bus.simic.simulated import SimulatedExperience
from tamiyo_bus.simic.store import ExperienceStore
from tests.policy.helpers import SMALL, holder_for
from weatherlight.learner import learner_gauges
from weatherlight.role_keys import RoleKeys

from .helpers import initial_policy, learner_settings, simulated

KEYS = RoleKeys.generate()


def _bus(settings: OonaSettings, role: str) -> Bus:
    return Bus(open_redis(settings.redis_url, settings), settings, KEYS.signer(role), source=role)


async def _publish(bus: Bus, experience: SimulatedExperience) -> None:
    for segment in experience.segments:
        await bus.publish(pb.MESSAGE_TYPE_TRAJECTORY, segment.SerializeToString(),
                          stream=Stream.TRAJECTORIES)  # fmt: skip
    for report in experience.reports:
        await bus.publish(pb.MESSAGE_TYPE_FIELD_REPORT, report.SerializeToString(),
                          stream=Stream.FIELD_REPORTS)  # fmt: skip


Learning = tuple[LearnerService, Bus, TelemetryProducer]


async def _learn_once(settings: OonaSettings, data_dir: Path) -> Learning:
    """A learner service that drains what is on the bus and runs one cycle."""
    bus = _bus(settings, "simic")
    producer = TelemetryProducer(bus, source="simic")
    await producer.start()
    learner_config = learner_settings(data_dir)
    # two short simulated runs are too few to tell two close policies apart, and the
    # gate's bounds have their own tests: here the loop and the resume are under test
    gate = replace(
        learner_config.gate, sim_return_tolerance=1.0, value_error_tolerance=1e6, max_kl=1.0
    )
    learner_config = replace(learner_config, gate=gate)
    learner = SimicLearner(
        learner_config,
        ExperienceStore(learner_config.store_path),
        initial_policy(),
        events=BufferedEventSink(),
        sink=learner_gauges(TelemetryMetricsSink(producer)),
    )
    service = LearnerService(bus, KEYS.keyring, KEYS.signer("simic"), learner)
    await service.intake.drain()
    assert await service.cycle(asyncio.Event())
    await producer.flush()
    return service, bus, producer


async def _telemetry(settings: OonaSettings) -> list[pb.TelemetryPacket]:
    packets: list[pb.TelemetryPacket] = []

    async def collect(delivery: Delivery) -> None:
        packets.append(pb.TelemetryPacket.FromString(delivery.envelope.payload))

    bus = _bus(settings, "weatherlight")
    subscription = Subscription("check", "check-1", (Stream.TELEMETRY,),
                                frozenset({pb.MESSAGE_TYPE_TELEMETRY}))  # fmt: skip
    consumer = Consumer(bus, subscription, collect, KEYS.keyring)
    await consumer.drain()
    assert consumer.metrics.count("rejected", stream=Stream.TELEMETRY) == 0
    await bus.close()
    return packets


async def test_the_learner_publishes_a_policy_tamiyo_applies_and_resumes_after_a_restart(
    settings: OonaSettings, tmp_path: Path
) -> None:
    tamiyo = _bus(settings, "tamiyo")
    actor = ServingPolicy(SMALL)
    actor.load_state_dict(initial_policy().state_dict())
    holder = holder_for(actor, version=1)
    listener = PolicyUpdateListener(
        tamiyo, PolicyUpdateTransaction(holder, KEYS.keyring), KEYS.keyring
    )
    await _publish(tamiyo, simulated(initial_policy(), runs=4, version=1))

    service, bus, producer = await _learn_once(settings, tmp_path)
    await listener.consumer.drain()

    assert holder.current().version == 2
    assert service.publisher.published == 1 and service.learner.progress.delivered_version == 2
    names = {m.name for p in await _telemetry(settings) for m in p.metrics}
    assert {METRIC_LEARNER_POLICY_LOSS, METRIC_LEARNER_APPROX_KL, METRIC_LEARNER_CANDIDATES,
            METRIC_LEARNER_REPLAY_FILL} <= names  # fmt: skip
    updates = service.learner.progress.updates
    await producer.stop()
    service.close()
    await bus.close()

    applied = holder.current().module
    policy = initial_policy()
    policy.load_state_dict(applied.state_dict())
    await _publish(tamiyo, simulated(policy, runs=4, seed=3, version=2))
    resumed, bus, producer = await _learn_once(settings, tmp_path)
    await listener.consumer.drain()

    assert resumed.learner.progress.updates == updates + 1
    assert holder.current().version == 3
    await producer.stop()
    resumed.close()
    for client in (bus, tamiyo):
        await client.close()
