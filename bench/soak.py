"""Soak: the whole system under load, with faults on a schedule, and what survived.

The system (bench/soak_system.py) runs as real processes: the embedded server, a TCP
proxy, Weatherlight's services each in a `serve` process (telemetry hub, Nissa, drain,
two Simic intakes sharing one store), the trainer (Tolaria, Tamiyo, Kasmina, field
reports, telemetry), numbered probe packets on the NORMAL and CRITICAL lanes with a
consumer that journals them, and a producer whose clock runs two minutes ahead.

Faults, one after another, each once the system is healthy again: SIGKILL of each
service and of the trainer, SIGSTOP/SIGCONT of a Simic intake, `kill -9` of the server
and its restart, every connection through the proxy dropped, 50 ms of added latency,
ENOSPC under the field-report log (a full tmpfs where one can be mounted, else segments
refused by the log's opener). The skewed clock runs throughout. A fault's recovery time
runs from its end until the system is healthy again (soak_system.System.healthy).

``--short`` (CI): the schedule once. The default (people): the schedule again and again
for ``--seconds``. Then producers stop, the trainer ends its run and waits for its last
acks, everything stops, and the figures come out: per stream entries added and, per
group, entries read and what was left; probes published, delivered, lost, delivered
again; field reports written, stored, lost (must be 0) and stored twice; acks applied
twice; commands forged and rejected; the longest trainer stall; recovery per fault;
RSS and server memory at start and end; the probes' publish-to-apply latency. A table,
and with --json one final JSON line.

    .venv/bin/python bench/soak.py --short --json
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentiles
from bench.soak_system import PREFIX, System
from consumers.simic import ReportStore
from leyline_pb import leyline_pb2 as pb
from oona.streams import Stream, dead_letter_key
from tamiyo_bus.reports.records import Kind
from tamiyo_bus.reports.wal import WalSettings, scan

HEALTHY_TIMEOUT_S = 60.0
STALL_BUDGET_S = 3.0
LATENCY_MS = 50.0
SETTLE_S = 60.0
QUIET_SHORT_S = 5.0
QUIET_LONG_S = 30.0
SERVER_KILL_EXCEPTION_S = 3.0
"""How long before a server's `kill -9` a unit may have been applied and still be applied
again (the delivery promise's exception): with `everysec` the server holds writes back
for up to two seconds while a slow fsync runs, and a killed server loses them; one more
second for the record's flush and the fault's own timing."""
SERVER_KILL = "kill -9 server"


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[System], None]
    end: Callable[[System], None] | None = None
    hold_s: float = 0.0


def _kill(*names: str) -> Callable[[System], None]:
    return lambda system: system.kill(*names)


def _latency(ms: float) -> Callable[[System], None]:
    def set_latency(system: System) -> None:
        assert system.proxy is not None
        system.proxy.latency_ms = ms

    return set_latency


SERVICE_KILLS = (
    Fault("SIGKILL telemetry hub", _kill("hub")),
    Fault("SIGKILL Nissa", _kill("nissa")),
    Fault("SIGKILL drain", _kill("drain")),
    Fault("SIGKILL Simic A", _kill("simic-a")),
)
SERVICE_KILLS_AT_ONCE = (
    Fault("SIGKILL hub, Nissa, drain and Simic A at once",
          _kill("hub", "nissa", "drain", "simic-a")),
)  # fmt: skip
OTHER_FAULTS = (
    Fault("SIGSTOP/SIGCONT Simic B (6 s)", lambda s: s.pause("simic-b"),
          lambda s: s.resume("simic-b"), 6.0),
    Fault("SIGKILL trainer", _kill("trainer")),
    Fault(SERVER_KILL, lambda s: s.kill_server()),
    Fault("proxy drops every connection", lambda s: s.proxy.drop() and None),  # type: ignore[union-attr]
    Fault(f"proxy adds {LATENCY_MS:.0f} ms (4 s)", _latency(LATENCY_MS), _latency(0.0), 4.0),
    Fault("ENOSPC under the field-report log (3 s)", lambda s: s.fill_disk(),
          lambda s: s.free_disk(), 3.0),
)  # fmt: skip


def wait_healthy(
    system: System, timeout_s: float, since_s: float = 0.0
) -> tuple[float | None, list[str]]:
    """Seconds until the system is healthy, every part of it active since `since_s`
    (None past `timeout_s`), and what it waited for meanwhile, in order."""
    started = time.monotonic()
    waited: list[str] = []
    while time.monotonic() - started < timeout_s:
        reason = system.healthy(since_s)
        if not reason:
            return round(time.monotonic() - started, 2), waited
        if not waited or waited[-1] != reason:
            waited.append(reason)
        time.sleep(0.2)
    return None, waited


def run_faults(system: System, seconds: float, short: bool) -> list[dict[str, Any]]:
    """The schedule once (short: the services killed together, which saves their four
    restarts' time), or again and again until `seconds` have passed."""
    schedule = (*(SERVICE_KILLS_AT_ONCE if short else SERVICE_KILLS), *OTHER_FAULTS)
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while True:
        for fault in schedule:
            before, _ = wait_healthy(system, HEALTHY_TIMEOUT_S)
            injected = time.time()
            fault.inject(system)
            if fault.end is not None:
                time.sleep(fault.hold_s)
                fault.end(system)
            recovery, waited = wait_healthy(system, HEALTHY_TIMEOUT_S, since_s=time.time())
            results.append({"fault": fault.name, "at_s": round(injected, 3),
                            "ended_s": round(time.time() - (recovery or 0.0), 3),
                            "healthy_before": before is not None, "recovery_s": recovery,
                            "waited_for": waited[:6]})  # fmt: skip
            print(
                f"  {fault.name:<45} recovered in "
                f"{'-' if recovery is None else f'{recovery:.2f} s'}: {waited[:3]}",
                flush=True,
            )
        if short or time.monotonic() > deadline:
            return results


def settle(system: System) -> None:
    """Stop the producers, let the trainer end its run and wait for its acks, then let
    the probe consumer catch up."""
    system.stop(["probe-telemetry", "probe-emergency", "skewed"])
    system.stop(["trainer"])
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        acked = {lane: system.acked_probes(lane, time.time()) for lane in system.probe_rates}
        if all(system.delivered_probes(lane, n) >= n for lane, n in acked.items()):
            break
        time.sleep(0.2)


def field_reports(system: System) -> dict[str, int]:
    records = scan(system.wal_dir, WalSettings()).records
    written = {
        pb.FieldReport.FromString(r.body).report_id for r in records if r.kind == Kind.REPORT
    }
    acks = Counter(r.body for r in records if r.kind == Kind.ACK)
    store_path = system.data / "simic" / "field_reports.sqlite3"
    for spill in store_path.parent.glob(f"*.spill-*{store_path.suffix}"):
        ReportStore(store_path, spill_path=spill).merge_spill()
    with sqlite3.connect(store_path) as db:
        stored = Counter(r[0] for r in db.execute("SELECT report_id FROM field_reports"))
    return {
        "written": len(written),
        "stored": len(stored),
        "lost": len(written - set(stored)),
        "stored_twice": sum(1 for n in stored.values() if n > 1),
        "acks_applied": len(acks),
        "acks_applied_twice": sum(1 for n in acks.values() if n > 1),
    }


def excused(first_applied_s: float, faults: list[dict[str, Any]]) -> bool:
    """Whether a unit first applied at `first_applied_s` may be applied again: its
    ledger record could have died with a killed server."""
    return any(
        f["fault"] == SERVER_KILL
        and f["at_s"] - SERVER_KILL_EXCEPTION_S <= first_applied_s <= f["ended_s"]
        for f in faults
    )


def probes(
    system: System, quiet: tuple[float, float], faults: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per lane; `latency_quiet_ms` over the probes published in the `quiet` window (the
    system under its load, before any fault); `applied_again_unexcused` counts the units
    applied again that the delivery promise's exception does not cover (must be 0)."""
    out: dict[str, dict[str, Any]] = {}
    with sqlite3.connect(system.journal) as db:
        for lane in system.probe_rates:
            acked = system.acked_probes(lane, time.time())
            rows = db.execute("SELECT seq, deliveries, issued_ns, applied_ns FROM probes "
                              "WHERE lane = ?", (lane,)).fetchall()  # fmt: skip
            seqs = Counter(r[0] for r in rows)
            latencies = [(r[3] - r[2]) / 1e6 for r in rows]
            calm = [(r[3] - r[2]) / 1e6 for r in rows if quiet[0] <= r[2] / 1e9 <= quiet[1]]
            again = [r for r in rows if r[1] > 1]
            out[lane] = {
                "published": acked,
                "delivered": len(seqs),
                "lost": len(set(range(acked)) - set(seqs)),
                "units_delivered_again": len(again),
                "applied_again_unexcused": sum(1 for r in again if not excused(r[3] / 1e9, faults)),
                "published_twice": sum(1 for n in seqs.values() if n > 1),
                "latency_ms": percentiles(latencies, digits=1) if latencies else {},
                "latency_quiet_ms": percentiles(calm, digits=1) if calm else {},
            }
    return out


def commands(stats: list[dict[str, Any]]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    for incarnation in stats:
        reasons.update(incarnation["rejected_reasons"])
    forged = sum(s["forged"] for s in stats)
    rejected = sum(s["rejected"] for s in stats)
    return {"forged": forged, "rejected": rejected, "rejected_not_forged": rejected - forged,
            "reasons": dict(reasons)}  # fmt: skip


def dead_letters(system: System) -> dict[str, Any]:
    assert system.client is not None
    out: dict[str, Any] = {}
    for stream in Stream:
        key = dead_letter_key(PREFIX, stream)
        try:
            info: Any = system.client.xinfo_stream(key)
        except redis.ResponseError:
            continue
        reasons = Counter(r[b"reason"].decode() for _, r in system.client.xrange(key))
        out[stream.value] = {"added": int(info["entries-added"]), "reasons": dict(reasons)}
    return out


def figures(system: System, faults: list[dict[str, Any]], memory: dict[str, Any],
            quiet: tuple[float, float], alerts: dict[str, int], wall_s: float,
            mode: str) -> dict[str, Any]:  # fmt: skip
    stats = system.trainer_stats()
    return {
        "bench": "soak",
        "mode": mode,
        "wall_s": round(wall_s, 1),
        "field_reports": field_reports(system),
        "probes": probes(system, quiet, faults),
        "alerts": alerts,
        "streams": system.groups(),
        "commands": commands(stats),
        "trainer": {
            "incarnations": len(stats),
            "steps": sum(s["steps"] for s in stats),
            "max_stall_s": max((s["max_step_gap_s"] for s in stats), default=0.0),
            "stall_budget_s": STALL_BUDGET_S,
            "telemetry_published": sum(s["telemetry_published"] for s in stats),
            "telemetry_dropped": sum(s["telemetry_dropped"] for s in stats),
            "wal_write_errors": sum(s["wal_write_errors"] for s in stats),
        },
        "skewed_clock": dead_letters(system),
        "faults": faults,
        "memory_mb": memory,
        "enospc": "tmpfs" if system.tmpfs else "opener",
        "machine": machine(processes=len(system.processes) + 1),
    }


def print_table(result: dict[str, Any]) -> None:
    reports = result["field_reports"]
    print(f"\nsoak ({result['mode']}, {result['wall_s']:.0f} s)")
    print(f"  field reports  written {reports['written']}, stored {reports['stored']}, "
          f"lost {reports['lost']}, stored twice {reports['stored_twice']}, acks applied "
          f"twice {reports['acks_applied_twice']}")  # fmt: skip
    for lane, p in result["probes"].items():
        print(
            f"  probes {lane:<9} published {p['published']}, delivered {p['delivered']}, "
            f"lost {p['lost']}, units delivered again {p['units_delivered_again']} "
            f"({p['applied_again_unexcused']} outside the promise's exception), "
            f"published twice {p['published_twice']}"
        )
        print(f"    publish-to-apply ms: whole run {p['latency_ms']}, "
              f"before the faults {p['latency_quiet_ms']}")  # fmt: skip
    c = result["commands"]
    print(f"  commands       forged {c['forged']}, rejected {c['rejected']} {c['reasons']}")
    t = result["trainer"]
    print(
        f"  trainer        {t['steps']} steps in {t['incarnations']} incarnations, "
        f"longest stall {t['max_stall_s']:.2f} s (budget {t['stall_budget_s']:.1f} s)"
    )
    for stream, info in result["streams"].items():
        groups = ", ".join(f"{g} read {s['entries_read']} left {s['lag'] + s['pending']}"
                           for g, s in info["groups"].items())  # fmt: skip
        print(f"  {stream:<20} added {info['entries_added']}: {groups}")
    print(f"  dead letters   {result['skewed_clock']}")
    print(f"  alerts seen    {result['alerts']}")
    for fault in result["faults"]:
        rec = fault["recovery_s"]
        print(f"  {fault['fault']:<45} {'NOT RECOVERED' if rec is None else f'{rec:.2f} s'}")
    mem = result["memory_mb"]
    print(f"  memory MB      start {mem['start']}\n                 end   {mem['end']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the fault schedule once (CI)")
    parser.add_argument("--seconds", type=float, default=600.0, help="long mode's duration")
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--out", type=Path, help="where the run keeps its files and logs")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tamiyo-soak-"))
    system = System(out)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        system.start()
        print(f"soak: {len(system.processes)} processes, files in {out}", flush=True)
        ready, waited = wait_healthy(system, 120.0)
        if ready is None:
            print(f"soak: the system never became healthy: {waited[-3:]}", file=sys.stderr)
            return 2
        memory_start = system.memory()
        quiet = (time.time(), time.time() + (QUIET_SHORT_S if args.short else QUIET_LONG_S))
        time.sleep(quiet[1] - quiet[0])
        faults = run_faults(system, args.seconds, args.short)
        memory = {"start": memory_start, "end": system.memory()}
        alerts = system.alerts()
        settle(system)
        result = figures(system, faults, memory, quiet, alerts, time.monotonic() - started,
                         "short" if args.short else "long")  # fmt: skip
    finally:
        system.close()
    print_table(result)
    if args.json:
        print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
