"""The soak's trainer: Tolaria training a small host with Tamiyo deciding and Kasmina
applying, field reports written and delivered, telemetry published, as the demo does
but without Weatherlight's services (they run as processes of their own in the soak).

``python bench/soak_trainer.py --run-dir DIR --incarnation N --redis-url URL --keys DIR``
trains until SIGTERM, then ends the run, waits (bounded) for Simic to acknowledge every
report and exits. Each incarnation (the soak SIGKILLs and restarts it) is a training run
of its own, ``soak-<N>``; on start it ends the runs of the incarnations before it, whose
windows the kill left open, so their reports are written and delivered too.

Every `STATS_INTERVAL_S` it appends one JSON line of cumulative figures to its stats
file (the last one survives a SIGKILL): steps, the longest gap between two steps,
commands forged / rejected / applied, field reports written and whether the log's
writes are failing. A forged command (signed by a key nobody trusts) is offered to
Kasmina every `FORGE_EVERY_STEPS` steps. While the disk under the log is full (a tmpfs
the soak fills, or SIGUSR1..SIGUSR2 here, which makes new segments fail to open as a
full disk would), the log's appends fail and are retried.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import SOURCE_KASMINA, SOURCE_TAMIYO, SOURCE_TOLARIA
from oona.bus import Bus
from oona.keys import Signer
from oona.settings import OonaSettings
from producers.sinks import DecisionTelemetrySink, TelemetryEventSink, TelemetryMetricsSink
from producers.telemetry import TelemetryProducer
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.kasmina.telemetry import to_packet
from tamiyo_bus.reports.book import ReportState, RetryPolicy
from tamiyo_bus.reports.delivery import DeliverySettings, ReportDelivery
from tamiyo_bus.reports.reporter import FieldReporter, ReportSettings
from tamiyo_bus.reports.wal import WalSettings
from tamiyo_bus.security.commands import CommandSigner, stamp_command
from tamiyo_bus.tolaria.trainer import EpochRecord, StepRecord
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble
from weatherlight.demo.observers import FieldReportObserver, TolariaTelemetry
from weatherlight.role_keys import RoleKeys

STATS_INTERVAL_S = 0.25
FORGE_EVERY_STEPS = 200
FORWARD_INTERVAL_S = 0.05
SETTLE_S = 30.0


class FullDisk:
    """The log's opener: refuses new segments (ENOSPC) between SIGUSR1 and SIGUSR2."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device (soak)", str(path))
        return os.open(path, flags, mode)


class Progress:
    """Counted on the training thread; read by the stats writer."""

    def __init__(self, kasmina: Kasmina, run_id: str) -> None:
        self.kasmina = kasmina
        self.run_id = run_id
        self.steps = 0
        self.last_step_s = time.time()
        self.max_gap_s = 0.0
        self.forged = 0
        self._stranger = CommandSigner(Signer.generate())

    def on_step(self, record: StepRecord) -> None:
        now = time.time()
        if self.steps:
            self.max_gap_s = max(self.max_gap_s, now - self.last_step_s)
        self.last_step_s = now
        self.steps += 1
        if self.steps % FORGE_EVERY_STEPS == 0:
            self._forge(record.step)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.last_step_s = time.time()  # validation is not a stall of the step path

    def _forge(self, step: int) -> None:
        forged = pb.AdaptationCommand(
            command_type=pb.COMMAND_TYPE_SEED, target_seed_id="seed-0",
            training_run_id=self.run_id, global_step=step,
            seed=pb.SeedCommand(operation=pb.SEED_OP_GERMINATE, blueprint_id="forged"),
        )  # fmt: skip
        stamp_command(forged, "mallory")
        self._stranger.sign(forged)
        self.kasmina.apply_command(forged)
        self.forged += 1


def _write_stats(path: Path, figures: dict[str, Any]) -> None:
    with path.open("ab") as handle:
        handle.write(orjson.dumps(figures) + b"\n")


class AsyncSide:
    """Producers, field-report delivery and Kasmina's forwarder on a loop thread."""

    def __init__(self, oona: OonaSettings, keys: RoleKeys, run_id: str) -> None:
        self.oona = oona
        self.keys = keys
        self.run_id = run_id
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop = asyncio.Event()
        self.buses: dict[str, Bus] = {}
        self.producers: dict[str, TelemetryProducer] = {}
        self.tasks: list[asyncio.Future[None]] = []

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        for source in (SOURCE_TAMIYO, SOURCE_TOLARIA, SOURCE_KASMINA):
            bus = Bus.connect(self.oona, self.keys.signer(source), source=source)
            self.buses[source] = bus
            producer = TelemetryProducer(bus, source=source)
            await producer.start()
            self.producers[source] = producer

    def spawn(self, factory: Any) -> None:
        async def spawn() -> None:
            self.tasks.append(asyncio.ensure_future(factory()))

        self.call(spawn())

    def shutdown(self) -> None:
        async def shutdown() -> None:
            self.stop.set()
            for task in self.tasks:
                with contextlib.suppress(Exception):
                    await task
            for producer in self.producers.values():
                await producer.stop()
            for bus in self.buses.values():
                await bus.close()

        with contextlib.suppress(Exception):
            self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--wal-dir", type=Path, required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--keys", type=Path, required=True)
    parser.add_argument("--claim-idle-ms", type=int, default=3_000)
    args = parser.parse_args()
    run_id = f"soak-{args.incarnation}"
    stats_path = args.run_dir / f"trainer-{args.incarnation}.jsonl"
    keys = RoleKeys.load(args.keys)
    oona = OonaSettings(
        redis_url=args.redis_url, claim_idle_ms=args.claim_idle_ms, io_timeout_ms=3_000.0
    )
    disk = FullDisk()
    signal.signal(signal.SIGUSR1, lambda *_: setattr(disk, "full", True))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(disk, "full", False))
    reports = ReportSettings(
        wal_dir=args.wal_dir, wal=WalSettings(segment_max_bytes=64 * 1024),
        retry=RetryPolicy(ack_timeout_ms=2_000.0, retry_backoff_max_ms=4_000.0, max_attempts=1_000),
        write_retry_backoff_max_ms=200.0, control_poll_interval_ms=100.0,
    )  # fmt: skip
    side = AsyncSide(oona, keys, run_id)
    side.start()
    reporter = FieldReporter(reports, metrics=side.buses[SOURCE_TAMIYO].metrics, opener=disk)
    reporter.start()
    for earlier in range(args.incarnation):
        reporter.on_run_end(f"soak-{earlier}")
    delivery = ReportDelivery(
        reporter, side.buses[SOURCE_TAMIYO], keys.keyring,
        DeliverySettings(consumer_name=f"tamiyo-{args.incarnation}", idle_poll_ms=100.0),
    )  # fmt: skip
    side.spawn(lambda: delivery.run(side.stop))
    tamiyo = side.producers[SOURCE_TAMIYO]
    store = UrzaStore.open_seeded(UrzaSettings(db_path=args.run_dir / f"urza-{run_id}.sqlite"))
    spec = replace(RunSpec(), epochs=1_000_000, device="cpu")
    observers = [
        FieldReportObserver(reporter),
        TolariaTelemetry(side.producers[SOURCE_TOLARIA], run_id),
    ]
    built = assemble(
        spec, run_id=run_id, signer=keys.signer(SOURCE_TAMIYO), keyring=keys.keyring,
        store=store, observers=observers,
        telemetry=DecisionTelemetrySink(tamiyo), events=TelemetryEventSink(tamiyo, run=run_id),
        metrics=TelemetryMetricsSink(tamiyo, run=run_id),
    )  # fmt: skip
    progress = Progress(built.kasmina, run_id)
    built.trainer.observers = (*built.trainer.observers, progress)
    outbox = built.kasmina.outbox

    async def forward() -> None:
        producer = side.producers[SOURCE_KASMINA]
        while not side.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(side.stop.wait(), FORWARD_INTERVAL_S)
            for item in outbox.drain():
                producer.emit(to_packet(item, run_id=run_id))

    side.spawn(forward)
    written = reporter.metrics

    def figures(final: bool = False) -> dict[str, Any]:
        stats = built.kasmina.stats
        producers = side.producers.values()
        return {
            "incarnation": args.incarnation, "pid": os.getpid(), "time_s": time.time(),
            "steps": progress.steps, "last_step_s": progress.last_step_s,
            "max_step_gap_s": round(progress.max_gap_s, 4), "forged": progress.forged,
            "rejected": sum(stats.rejected.values()), "rejected_reasons": dict(stats.rejected),
            "applied": stats.applied,
            "telemetry_published": sum(p.stats.batched + p.stats.urgent for p in producers),
            "telemetry_dropped": sum(p.stats.dropped for p in producers),
            "reports_written": written.count("reports_written"),
            "wal_write_errors": int(written.count("reports_wal_write_errors")),
            "disk_full": disk.full, "final": final,
        }  # fmt: skip

    done = threading.Event()

    def write_stats() -> None:
        errors = 0
        while not done.wait(STATS_INTERVAL_S):
            now = figures()
            now["wal_failing"] = now["wal_write_errors"] > errors
            errors = now["wal_write_errors"]
            _write_stats(stats_path, now)

    threading.Thread(target=write_stats, daemon=True).start()

    def end_training(*_: object) -> None:
        trainer = built.trainer
        trainer.settings = replace(trainer.settings, max_steps=max(trainer.step, 1))

    signal.signal(signal.SIGTERM, end_training)
    built.trainer.run()
    reporter.on_run_end(run_id)
    reporter.flush()
    deadline = time.monotonic() + SETTLE_S
    while reporter.book.counts()[ReportState.PENDING] and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    _write_stats(stats_path, figures(final=True))
    built.close()
    side.shutdown()
    reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
