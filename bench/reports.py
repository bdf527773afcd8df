"""Field-report figures, in one run on the same disk and server.

(a) reference: raw `os.write` + `os.fsync` of one record-sized buffer at a time, the
    floor under any log that syncs every record;
(b) write-ahead log append throughput and per-append latency p50/p99 for each fsync
    policy (`every_record`; `interval` at 50 ms with the writer's `sync_if_due` after
    each append; CRITICAL records, synced at once under either policy), one record per
    call, plus group commit (64 records per call) under `every_record`. The syncing
    ones run in alternating blocks with (a), so a disk shared with other work slows
    them alike;
(c) the step-path call `FieldReporter.on_command` p50/p99 (it only enqueues);
(d) end to end: reports synthesised by the writer thread, published, stored by Simic
    in SQLite and acked back: reports per second into Simic's store, and until every
    report is retired in Tamiyo's log.

Prints a table; with --json, one final JSON line with the figures, sizes and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bus_server, machine, percentile
from consumers.simic import ReportStore, SimicIntake
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.keys import UNRESTRICTED, Keyring, Signer
from oona.settings import OonaSettings
from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.reports.delivery import ReportDelivery
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.reporter import FieldReporter, ReportSettings
from tamiyo_bus.reports.wal import FsyncPolicy, WalSettings, WriteAheadLog
from tamiyo_bus.reports.windows import WindowSettings
from tests.reports.drill import DrillPlan

CRITICAL = pb.MESSAGE_PRIORITY_CRITICAL
NORMAL = pb.MESSAGE_PRIORITY_NORMAL


def sample_report() -> bytes:
    """A FieldReport as the writer synthesises it (realistic size)."""
    report = pb.FieldReport(
        report_id="fr-" + "a" * 32, command_id="drill-cmd-0000001", training_run_id="drill",
        seed_id="seed-1", blueprint_id="bp-1", outcome=pb.FIELD_REPORT_OUTCOME_SUCCESS,
        observation_window_epochs=3, issued_at_ns=time.time_ns(), policy_version=1,
        metrics={name: 0.123 for name in (
            "window_epochs", "opened_epoch", "last_epoch", "breaker_opens", "risk_events",
            "rollbacks", "emergencies", "truncated", "loss_before", "loss_after",
            "loss_change", "accuracy_before", "accuracy_after", "accuracy_change",
            "parameter_ratio", "seed_stage",
        )},
    )  # fmt: skip
    return report.SerializeToString()


def figures(latencies_ms: list[float], elapsed_s: float) -> dict[str, float]:
    return {
        "records_per_s": round(len(latencies_ms) / elapsed_s),
        "p50_ms": round(statistics.median(latencies_ms), 4),
        "p99_ms": round(percentile(latencies_ms, 0.99), 4),
    }


def timed(calls: int, call: Callable[[], object]) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return figures(latencies, time.perf_counter() - started)


def interleaved(
    calls: int, contenders: dict[str, Callable[[], object]], block: int = 100
) -> dict[str, dict[str, float]]:
    """Time contenders in alternating blocks, so a disk shared with other work slows
    them alike and their figures compare."""
    latencies: dict[str, list[float]] = {name: [] for name in contenders}
    elapsed = dict.fromkeys(contenders, 0.0)
    for _ in range(0, calls, block):
        for name, call in contenders.items():
            started = time.perf_counter()
            for _ in range(block):
                t0 = time.perf_counter()
                call()
                latencies[name].append((time.perf_counter() - t0) * 1000.0)
            elapsed[name] += time.perf_counter() - started
    return {name: figures(latencies[name], elapsed[name]) for name in contenders}


def synced_appends(root: Path, body: bytes, calls: int) -> dict[str, dict[str, float]]:
    """(a) raw write + fsync beside (b) `every_record` and CRITICAL under `interval`."""
    fd = os.open(root / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    every = WriteAheadLog(root / "every", WalSettings())
    interval = WalSettings(fsync_policy=FsyncPolicy.INTERVAL, fsync_interval_ms=50.0)
    critical = WriteAheadLog(root / "critical", interval)

    def raw() -> None:
        os.write(fd, body)
        os.fsync(fd)

    try:
        return interleaved(
            calls,
            {
                "raw_write_fsync": raw,
                "every_record": lambda: every.append(Kind.REPORT, body, NORMAL),
                "critical_under_interval": lambda: critical.append(Kind.REPORT, body, CRITICAL),
            },
        )
    finally:
        os.close(fd)
        every.close()
        critical.close()


def interval_appends(directory: Path, body: bytes, calls: int) -> dict[str, float]:
    """`interval` at 50 ms, with the writer's `sync_if_due` after each append."""
    wal = WriteAheadLog(
        directory, WalSettings(fsync_policy=FsyncPolicy.INTERVAL, fsync_interval_ms=50.0)
    )

    def append() -> None:
        wal.append(Kind.REPORT, body, NORMAL)
        wal.sync_if_due()

    try:
        return timed(calls, append)
    finally:
        wal.close()


def wal_group_commit(directory: Path, body: bytes, calls: int, group: int) -> dict[str, float]:
    wal = WriteAheadLog(directory, WalSettings())
    items = [(int(Kind.REPORT), body, int(NORMAL))] * group
    try:
        figures = timed(calls // group, lambda: wal.append_many(items))
    finally:
        wal.close()
    figures["records_per_s"] *= group
    return figures


def step_path(directory: Path, calls: int) -> dict[str, float]:
    plan = DrillPlan(epochs=1, decisions_per_epoch=calls)
    settings = ReportSettings(wal_dir=directory, queue_max_items=calls + 10)
    reporter = FieldReporter(settings).start()
    commands = [plan.command(0, i) for i in range(calls)]
    packet = plan.state(0)
    it = iter(commands)
    try:
        figures = timed(calls, lambda: reporter.on_command(next(it), packet))
        figures["refused"] = reporter.metrics.count("reports_queue_full")
    finally:
        reporter.close()
    return figures


async def end_to_end(url: str, directory: Path, reports: int) -> dict[str, float]:
    settings = OonaSettings(redis_url=url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    signer = Signer.generate()
    keyring = Keyring.of(signer.public_key(), role=UNRESTRICTED)
    tamiyo = Bus(open_redis(url, settings), settings, signer, source="tamiyo")
    simic = Bus(open_redis(url, settings), settings, signer, source="simic")
    store = ReportStore(directory / "simic.sqlite3")
    plan = DrillPlan(epochs=1, decisions_per_epoch=reports)
    report_settings = ReportSettings(
        wal_dir=directory / "wal", windows=WindowSettings(window_epochs=1),
        queue_max_items=reports + 10,
    )  # fmt: skip
    reporter = FieldReporter(report_settings, metrics=tamiyo.metrics).start()
    for i in range(reports):
        reporter.on_command(plan.command(0, i), plan.state(0))
    await asyncio.to_thread(reporter.flush)  # windows open; nothing to deliver yet
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(ReportDelivery(reporter, tamiyo, keyring).run(stop)),
        asyncio.create_task(SimicIntake(simic, keyring, store).run(stop)),
    ]
    ids = plan.report_ids()
    started = time.perf_counter()
    reporter.on_epoch_end(plan.state(1))  # closes every window: `reports` reports
    while store.count() < reports:
        await asyncio.sleep(0.02)
    stored_s = time.perf_counter() - started
    while not all(reporter.book.state_of(i) is ReportState.ACKED for i in ids):
        await asyncio.sleep(0.02)
    retired_s = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    reporter.close()
    duplicates = store.duplicates()
    store.close()
    await tamiyo.close()
    await simic.close()
    return {
        "reports_per_s_into_simic_store": round(reports / stored_s),
        "reports_per_s_retired_in_tamiyo_log": round(reports / retired_s),
        "seconds_to_store_all": round(stored_s, 3),
        "duplicates_stored_once": duplicates,
    }


def run(args: argparse.Namespace, url: str, server_name: str, root: Path) -> dict[str, Any]:
    body = sample_report()
    n = args.records
    synced = synced_appends(root, body, n)
    policies = {
        "every_record": synced["every_record"],
        "interval_50ms": interval_appends(root / "interval", body, n),
        "critical_under_interval": synced["critical_under_interval"],
        "every_record_group_commit_64": wal_group_commit(root / "group", body, n * 4, 64),
    }
    return {
        "bench": "reports",
        "raw_write_fsync": synced["raw_write_fsync"],
        "wal_append": policies,
        "step_path_on_command": step_path(root / "step", args.step_calls),
        "end_to_end": asyncio.run(end_to_end(url, root / "e2e", args.reports)),
        "sizes": {
            "record_payload_bytes": len(body),
            "records_per_policy": n,
            "end_to_end_reports": args.reports,
            "step_calls": args.step_calls,
        },
        "server": server_name,
        "machine": machine(wal_dir=str(root)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--records", type=int, default=5_000, help="appends per policy")
    parser.add_argument("--reports", type=int, default=2_000, help="reports end to end")
    parser.add_argument("--step-calls", type=int, default=20_000)
    parser.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    args = parser.parse_args()
    with (
        bus_server() as (url, server_name, _),
        tempfile.TemporaryDirectory(prefix="bench-reports-", dir=args.dir) as tmp,
    ):
        result = run(args, url, server_name, Path(tmp))
    print(f"server: {server_name}; machine: {os.cpu_count()} cores")
    raw = result["raw_write_fsync"]
    print(f"  {'(a) raw write + fsync':<46} {raw['records_per_s']:>9,}/s "
          f"p50 {raw['p50_ms']:.3f} ms  p99 {raw['p99_ms']:.3f} ms")  # fmt: skip
    for name, figures in result["wal_append"].items():
        print(f"  {'(b) WAL append, ' + name:<46} {figures['records_per_s']:>9,}/s "
              f"p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms")  # fmt: skip
    step = result["step_path_on_command"]
    print(f"  {'(c) step path on_command':<46} {step['records_per_s']:>9,}/s "
          f"p50 {step['p50_ms']:.4f} ms  p99 {step['p99_ms']:.4f} ms")  # fmt: skip
    e2e = result["end_to_end"]
    print(f"  {'(d) end to end into Simic store':<46} "
          f"{e2e['reports_per_s_into_simic_store']:>9,}/s")  # fmt: skip
    print(f"  {'    until retired in Tamiyo log':<46} "
          f"{e2e['reports_per_s_retired_in_tamiyo_log']:>9,}/s")  # fmt: skip
    if args.json:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
