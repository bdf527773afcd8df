"""Attack class 1 of issue 17, the telemetry hub: one unsigned entry once killed the
hub's emergency lane, the task group's cancel of the other lane was swallowed inside
the client library, and the hub hung half alive (no CRITICAL packet delivered, the
supervisor still showing it running). Now the entry is refused, and a lane that dies
for any reason takes the hub down visibly, so the supervisor restarts it."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext

import pytest

from consumers.hub.service import HubSettings, TelemetryHub
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer
from oona.envelope import SINGLE_FIELD
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from producers.telemetry import TelemetryProducer
from tests.telemetry.helpers import critical_packet, read_aggregates, wait_until
from weatherlight.supervisor import (
    BusComponent,
    ServiceContext,
    ServiceSpec,
    ServiceState,
    Supervisor,
    SupervisorSettings,
    bus_service,
)

HANG_LIMIT_S = 10.0


def swallow_cancels(consumer: Consumer) -> list[int]:
    """Make `consumer.poll_once` behave as redis-py under Python 3.11 can: a cancel
    that races a completed read is swallowed (``asyncio.wait_for`` returns the result
    instead of raising). Returns a list that counts the swallowed cancels."""
    poll = consumer.poll_once
    swallowed: list[int] = []

    async def poll_once(*, block: bool = True) -> int:
        try:
            return await poll(block=block)
        except asyncio.CancelledError:
            swallowed.append(1)
            return 0

    consumer.poll_once = poll_once  # type: ignore[method-assign]
    return swallowed


async def test_an_unsigned_entry_on_the_emergency_stream_leaves_the_hub_delivering(
    bus: Bus, keyring: Keyring
) -> None:
    poison = pb.BusEnvelope(message_type=-1, signature=b"x" * 64)  # type: ignore[arg-type]
    await bus.redis.xadd(bus.key(Stream.EMERGENCY), {SINGLE_FIELD: poison.SerializeToString()})
    hub = TelemetryHub(bus, keyring, HubSettings(window_ms=60_000), consumer_name="hub-p")
    swallow_cancels(hub.routine)
    stop = asyncio.Event()
    running = asyncio.create_task(hub.run(stop))

    await TelemetryProducer(bus, source="kasmina").send(critical_packet("r1", "s1"))
    await wait_until(lambda: _critical_forwarded(bus), timeout_s=HANG_LIMIT_S)

    assert not running.done()
    assert bus.metrics.count("rejected", stream=Stream.EMERGENCY, reason="unknown_key") == 1
    stop.set()
    await asyncio.wait_for(running, HANG_LIMIT_S)


async def _critical_forwarded(bus: Bus) -> bool:
    return any(a.priority == pb.MESSAGE_PRIORITY_CRITICAL for a in await read_aggregates(bus))


async def test_a_lane_that_dies_takes_the_hub_down_even_when_the_cancel_is_swallowed(
    bus: Bus, keyring: Keyring
) -> None:
    hub = TelemetryHub(bus, keyring, HubSettings(window_ms=60_000), consumer_name="hub-d")
    swallowed = swallow_cancels(hub.routine)

    async def broken(*, block: bool = True) -> int:
        await asyncio.sleep(0.05)  # the other lane is mid-read when this one dies
        raise RuntimeError("emergency lane broke")

    hub.urgent.poll_once = broken  # type: ignore[method-assign]

    with pytest.raises(ExceptionGroup) as died:
        await asyncio.wait_for(hub.run(asyncio.Event()), HANG_LIMIT_S)

    assert died.group_contains(RuntimeError, match="emergency lane broke")
    assert swallowed  # the cancel was swallowed, and the lane stopped all the same


async def test_the_supervisor_restarts_a_hub_whose_lane_died_and_health_says_so(
    settings: OonaSettings, signer: Signer, keyring: Keyring
) -> None:
    lives: list[TelemetryHub] = []

    def build(bus: Bus, context: ServiceContext) -> AbstractAsyncContextManager[BusComponent]:
        hub = TelemetryHub(bus, context.keyring, HubSettings(window_ms=60_000))
        swallow_cancels(hub.routine)
        if not lives:  # the first life's emergency lane dies at once

            async def broken(*, block: bool = True) -> int:
                raise RuntimeError("emergency lane broke")

            hub.urgent.poll_once = broken  # type: ignore[method-assign]
        lives.append(hub)
        return nullcontext(hub)

    quick = SupervisorSettings(restart_backoff_base_ms=10.0, restart_backoff_max_ms=20.0)
    supervisor = Supervisor(
        [ServiceSpec("telemetry-hub", bus_service(build))], "test", settings, signer, keyring,
        quick,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))

    await supervisor.wait_until(lambda s: s.status["telemetry-hub"].restarts >= 1, HANG_LIMIT_S)
    await supervisor.wait_until(
        lambda s: s.status["telemetry-hub"].state is ServiceState.RUNNING, HANG_LIMIT_S
    )

    health = supervisor.health()
    assert not health.healthy  # degraded while the crash is recent
    service = health.detail["services"]["telemetry-hub"]  # type: ignore[index]
    assert "emergency lane broke" in service["last_error"]
    assert len(lives) == 2
    stop.set()
    await asyncio.wait_for(running, HANG_LIMIT_S)
