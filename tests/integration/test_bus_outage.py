"""A bus outage reaches the step path: the run's bus IO breaker is the risk gate's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerState
from oona.bus import Bus
from oona.connection import open_redis
from oona.errors import BusUnavailable
from oona.events import BufferedEventSink
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.risk import BreakerName
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


async def test_a_server_outage_puts_the_run_in_conservative_mode_and_recovery_is_seen(
    tmp_path: Path, signer: Signer
) -> None:
    server = EmbeddedServer(data_dir=tmp_path / "redis").start()
    settings = OonaSettings(
        redis_url=server.url, io_timeout_ms=300.0, reconnect_backoff_base_ms=10.0,
        reconnect_backoff_max_ms=50.0, io_breaker_failure_threshold=2,
        io_breaker_cooldown_ms=100.0,
    )  # fmt: skip
    bus = Bus(open_redis(server.url, settings), settings, signer, source="t")
    events = BufferedEventSink()
    try:
        await bus.publish(TELEMETRY, b"before", stream=Stream.NORMAL)
        inline = StepSettings(decision_mode=DecisionMode.INLINE, step_deadline_ms=2_000.0)
        run = assemble(
            RunSpec(epochs=1, step=inline),
            run_id="outage-run",
            signer=signer,
            keyring=Keyring.of(signer.public_key(), role=UNRESTRICTED),
            store=UrzaStore.open_seeded(UrzaSettings(db_path=tmp_path / "urza.sqlite")),
            events=events,
            adopted_breakers={BreakerName.BUS_IO: bus.io.breaker},
        )
        gate = run.tamiyo.risk
        assert gate.breakers[BreakerName.BUS_IO] is bus.io.breaker
        assert not gate.conservative.active

        server.stop(kill=True)
        with pytest.raises(BusUnavailable):
            await bus.publish(TELEMETRY, b"during", stream=Stream.NORMAL)
        assert bus.io.breaker.state is BreakerState.OPEN
        assert gate.conservative.active and gate.conservative.cause == "breaker.bus_io"
        # The bus's own retries may re-open the breaker after a failed trial call;
        # conservative mode is entered once, on the first opening.
        outage = [(e.name, e.attributes.get("breaker", "")) for e in events.drain()]
        assert outage[:2] == [("breaker_opened", "bus_io"), ("conservative_entered", "")]
        assert [name for name, _ in outage].count("conservative_entered") == 1
        command = run.tamiyo.evaluate_step(run.trainer.state_packet())
        assert command is not None
        assert run.tamiyo.gate.last is not None and run.tamiyo.gate.last.conservative
        assert command.seed.operation != pb.SEED_OP_GERMINATE

        server.start()  # the publish retries through the cool-down and the trial call
        await bus.publish(TELEMETRY, b"after", stream=Stream.NORMAL)
        assert bus.io.breaker.state is BreakerState.CLOSED
        recovery = [e.name for e in events.drain() if e.name.startswith("breaker")]
        assert recovery[-2:] == ["breaker_half_open", "breaker_closed"]
        assert run.tamiyo.controller.wait_idle(5.0)
    finally:
        await bus.close()
        server.stop()
