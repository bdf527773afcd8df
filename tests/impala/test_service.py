"""The V-trace learner on a real server: an actor's rewarded segments in, a signed
PolicyUpdate out that Tamiyo's policy intake applies (a strictly newer version);
hostile segments dead-lettered, non-rewarded ones left to Simic's learner, a refused
update keeps its batch, and every consumed segment's lag is measured."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.impala.learner import ImpalaLearner
from tamiyo_bus.impala.service import ImpalaLearnerService
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyUpdateListener, PolicyUpdateTransaction
from tamiyo_bus.simic.intake import BAD_CHOICE
from tests.policy.helpers import holder_for
from tests.security.helpers import dead_letters
from weatherlight.role_keys import RoleKeys

from .helpers import actor_segments, impala_settings, initial_policy

KEYS = RoleKeys.generate()


def _bus(settings: OonaSettings, role: str) -> Bus:
    return Bus(open_redis(settings.redis_url, settings), settings, KEYS.signer(role), source=role)


async def _publish(bus: Bus, segments: list[pb.Trajectory]) -> None:
    for segment in segments:
        await bus.publish(pb.MESSAGE_TYPE_TRAJECTORY, segment.SerializeToString(),
                          stream=Stream.TRAJECTORIES)  # fmt: skip


def _service(bus: Bus, data_dir: Path, **overrides: object) -> ImpalaLearnerService:
    # two short simulated runs cannot tell close policies apart, and the gate's bounds
    # have their own tests: here the loop is under test
    settings = impala_settings(data_dir, **overrides)
    gate = replace(settings.gate, sim_return_tolerance=1.0, value_error_tolerance=1e6, max_kl=1.0)
    settings = replace(settings, gate=gate, held_out_fraction=0.25)
    learner = ImpalaLearner(settings, initial_policy())
    return ImpalaLearnerService(bus, settings, KEYS.signer("simic"), keyring=KEYS.keyring,
                                learner=learner)  # fmt: skip


async def test_actor_segments_are_learnt_and_the_candidate_reaches_tamiyo(
    settings: OonaSettings, tmp_path: Path
) -> None:
    tamiyo = _bus(settings, "tamiyo")
    serving = ServingPolicy(initial_policy().config)
    serving.load_state_dict(initial_policy().state_dict())
    holder = holder_for(serving, version=1)
    listener = PolicyUpdateListener(
        tamiyo, PolicyUpdateTransaction(holder, KEYS.keyring), KEYS.keyring
    )
    await _publish(tamiyo, actor_segments(initial_policy(), runs=8, version=1))
    bus = _bus(settings, "simic")
    service = _service(bus, tmp_path)
    await service.consumer.drain()
    stop = asyncio.Event()
    assert (await service.learn_once(stop)) is not None
    update = await service.learn_once(stop)
    assert update is not None and update.candidate is not None and update.verdict is not None
    await listener.consumer.drain()

    assert holder.current().version == 2 == update.candidate.version
    s = service.stats
    assert s.policies_published == 1 and service.learner.progress.updates == 2
    assert s.segments_consumed == s.segments_held_out + service.buffered + 16
    assert len(s.lags_s) == 16 and all(0 < lag < 60 for lag in s.lags_s)
    service.close()
    for client in (bus, tamiyo):
        await client.close()


async def test_hostile_segments_are_dead_lettered_and_unrewarded_ones_left_alone(
    settings: OonaSettings, tmp_path: Path
) -> None:
    segments = [s for s in actor_segments(initial_policy(), runs=2) if s.steps]
    outside = pb.Trajectory()
    outside.CopyFrom(segments[0])
    outside.steps[0].choice.action = 99
    unrewarded = pb.Trajectory()
    unrewarded.CopyFrom(segments[1])
    unrewarded.rewarded = False
    tamiyo = _bus(settings, "tamiyo")
    await _publish(tamiyo, [outside, unrewarded, *segments[2:]])
    bus = _bus(settings, "simic")
    service = _service(bus, tmp_path)

    await service.consumer.drain()

    reasons = [r[b"reason"].decode() for r in await dead_letters(tamiyo, Stream.TRAJECTORIES)]
    assert reasons == [BAD_CHOICE]
    s = service.stats
    assert (s.segments_rejected, s.segments_ignored) == (1, 1)
    assert s.segments_consumed == len(segments) - 2 == service.buffered + s.segments_held_out
    service.close()
    for client in (bus, tamiyo):
        await client.close()


async def test_with_the_breaker_open_the_batch_is_kept_and_nothing_is_published(
    settings: OonaSettings, tmp_path: Path
) -> None:
    await _publish(_bus(settings, "tamiyo"), actor_segments(initial_policy(), runs=8))
    bus = _bus(settings, "simic")
    service = _service(bus, tmp_path, updates_per_publish=1)
    await service.consumer.drain()
    buffered = service.buffered
    for _ in range(5):
        service.learner.guard.breaker.record_failure()

    update = await service.learn_once(asyncio.Event())

    assert update is not None and update.refused
    assert service.buffered == buffered and service.stats.updates_refused == 1
    assert service.stats.policies_published == 0 and service.learner.progress.updates == 0
    assert service.stats.lags_s == deque()
    service.close()
    await bus.close()
