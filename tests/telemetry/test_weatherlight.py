"""Weatherlight on the real server: restarts with backoff, pending entries processed
after a crash, system mode, emergency drained first, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext

import pytest

from consumers.hub.service import HubSettings
from consumers.nissa.health import HealthSettings
from consumers.nissa.service import NissaSettings
from consumers.nissa.state import StateSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus, Outgoing
from oona.consumer import Consumer, Delivery
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from producers.telemetry import TelemetryProducer
from weatherlight.drain import Drain, DrainStats, drain_subscription
from weatherlight.services import (
    Weatherlight,
    hub_service,
    nissa_service,
)
from weatherlight.supervisor import (
    BusComponent,
    ServiceContext,
    ServiceSpec,
    SupervisorSettings,
    SystemMode,
    bus_service,
)

from .helpers import critical_packet, wait_until
from .test_nissa import get

FAST = SupervisorSettings(restart_backoff_base_ms=10.0, degraded_hold_s=10.0)
NISSA = NissaSettings(port=0, tick_interval_s=0.05, lag_interval_s=0.1,
                      state=StateSettings(health=HealthSettings(hub_silence_s=2.0)))  # fmt: skip


class ShiftedClock:
    """Monotonic time that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def weatherlight(
    specs: list[ServiceSpec], settings: OonaSettings, signer: Signer, keyring: Keyring
) -> Weatherlight:
    return Weatherlight(specs, oona=settings, signer=signer, keyring=keyring,
                        instance="wl-test", settings=FAST)  # fmt: skip


@pytest.fixture
async def stopper() -> AsyncIterator[list[Weatherlight]]:
    started: list[Weatherlight] = []
    yield started
    for running in started:
        await running.stop()


async def test_a_crashed_service_is_restarted_and_its_pending_entries_processed(
    bus: Bus, settings: OonaSettings, signer: Signer, keyring: Keyring,
    stopper: list[Weatherlight],
) -> None:  # fmt: skip
    real_nissa = nissa_service(NISSA)
    attempts = 0

    async def crashes_once_holding_entries(context: ServiceContext) -> None:
        """First run: read entries as Nissa's consumer (they are now pending on it), then
        die before handling them, as a process killed mid-batch would."""
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            await real_nissa(context)
            return
        held = await bus.redis.xreadgroup(
            "nissa", context.consumer_name, {bus.key(Stream.TELEMETRY_AGGREGATED): ">"}
        )
        assert held, "the hub forwarded the CRITICAL aggregate before Nissa's first run"
        raise RuntimeError("simulated crash after reading, before acking")

    kasmina = TelemetryProducer(bus, source="kasmina")
    await kasmina.send(critical_packet("run-7", "s1", reason="leak"))
    hub_only = weatherlight([ServiceSpec("telemetry-hub", hub_service(HubSettings()))],
                            settings, signer, keyring)  # fmt: skip
    await bus.redis.xgroup_create(bus.key(Stream.TELEMETRY_AGGREGATED), "nissa", id="0",
                                  mkstream=True)  # fmt: skip
    await hub_only.start()
    stopper.append(hub_only)

    async def forwarded() -> bool:
        return int(await bus.redis.xlen(bus.key(Stream.TELEMETRY_AGGREGATED))) >= 1

    await wait_until(forwarded)
    clock = ShiftedClock()
    crashing = weatherlight([ServiceSpec("nissa", crashes_once_holding_entries)],
                            settings, signer, keyring)  # fmt: skip
    crashing.supervisor.clock = clock
    await crashing.start()
    stopper.append(crashing)
    supervisor = crashing.supervisor
    await supervisor.wait_until(lambda s: s.status["nissa"].starts == 2 and bool(s.endpoints))
    status = supervisor.status["nissa"]
    assert status.restarts == 1
    assert status.last_error == "RuntimeError: simulated crash after reading, before acking"
    assert supervisor.system_mode is SystemMode.DEGRADED  # a crash less than 10 s ago

    url = crashing.status_url
    assert url is not None

    async def alert_raised() -> bool:
        _, body = await get(url + "/alerts")
        active = json.loads(body)["active"]
        return any(a["labels"] == {"run": "run-7", "seed": "s1"} for a in active)

    await wait_until(alert_raised)
    pending = await bus.redis.xpending(bus.key(Stream.TELEMETRY_AGGREGATED), "nissa")
    assert pending["pending"] == 0
    clock.offset += 11.0
    assert supervisor.system_mode is SystemMode.OPERATIONAL
    _, body = await get(url + "/healthz")
    assert json.loads(body)["components"]["weatherlight"]["system_mode"] == "operational"


async def test_the_drain_takes_emergency_before_normal_and_stops_gracefully(
    bus: Bus, settings: OonaSettings, signer: Signer, keyring: Keyring
) -> None:
    await bus.publish_many(
        [Outgoing(pb.MESSAGE_TYPE_EVENT, b"routine", stream=Stream.NORMAL)] * 30
        + [Outgoing(pb.MESSAGE_TYPE_EVENT, b"urgent", priority=pb.MESSAGE_PRIORITY_HIGH)] * 10,
        batch_signed=False,
    )
    seen: list[bytes] = []
    entered = asyncio.Event()
    release = asyncio.Event()
    stats = DrainStats()
    drain = Drain(stats)

    async def handle(delivery: Delivery) -> None:
        """The drain's own handling, watched: the last message is held in flight when
        shutdown is asked for."""
        await drain.handle(delivery)
        seen.append(delivery.envelope.payload)
        if len(seen) == 40:
            entered.set()
            await release.wait()

    def build(bus: Bus, context: ServiceContext) -> AbstractAsyncContextManager[BusComponent]:
        subscription = drain_subscription(context.consumer_name)
        return nullcontext(Consumer(bus, subscription, handle, context.keyring))

    spec = ServiceSpec("drain", bus_service(build))
    running = weatherlight([spec], settings, signer, keyring)
    await running.start()
    await asyncio.wait_for(entered.wait(), timeout=10)
    stopping = asyncio.create_task(running.stop())
    await asyncio.sleep(0)  # let the stop request land while the handler still runs
    assert not stopping.done()
    release.set()
    await stopping
    assert seen[:10] == [b"urgent"] * 10 and seen[10:] == [b"routine"] * 30
    assert stats.messages == {(Stream.EMERGENCY, "MESSAGE_TYPE_EVENT"): 10,
                              (Stream.NORMAL, "MESSAGE_TYPE_EVENT"): 30}  # fmt: skip
    for stream in (Stream.EMERGENCY, Stream.NORMAL):
        assert (await bus.redis.xpending(bus.key(stream), "weatherlight"))["pending"] == 0
    assert running.supervisor.status["drain"].restarts == 0
