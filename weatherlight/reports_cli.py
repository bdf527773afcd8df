"""`tamiyo-bus reports list|show|parked|retry`: the field-report log, for operators.

Reading never disturbs the running Tamiyo: the log is scanned read-only (a record being
written at that moment reads as a torn tail and is left out of this view). `retry`
leaves a request file for the log's owner, which acts on it within its
`control_poll_interval_ms`, or at its next start.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from leyline_pb import leyline_pb2 as pb
from oona.metrics import BusMetrics
from tamiyo_bus.reports.book import ReportEntry, ReportState, RetryPolicy
from tamiyo_bus.reports.requests import ALL, request_retry, valid_target
from tamiyo_bus.reports.state import LogState
from tamiyo_bus.reports.wal import WalSettings, scan
from weatherlight.settings import SystemSettings


def default_wal_dir() -> Path:
    """The field-report log of the settings tree: `reports/` under `$TAMIYO_DATA_DIR`."""
    return SystemSettings.from_env().reports.wal_dir


class LogView:
    """The log's state as of now, rebuilt from a read-only scan."""

    def __init__(self, wal_dir: Path) -> None:
        result = scan(wal_dir, WalSettings())
        self.state = LogState(RetryPolicy(), retention_s=0.0)
        self.unreported = self.state.replay(result.records, BusMetrics())
        self.records = len(result.records)
        self.segments = len(result.segments)
        self.corrupt_regions = result.corrupt_regions

    def entries(self, state: ReportState | None = None) -> list[ReportEntry]:
        return self.state.book.entries(state)


def _time(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _as_dict(entry: ReportEntry) -> dict[str, Any]:
    r = entry.report
    return {
        "report_id": r.report_id,
        "state": entry.state.value,
        "outcome": pb.FieldReportOutcome.Name(r.outcome),
        "command_id": r.command_id,
        "training_run_id": r.training_run_id,
        "seed_id": r.seed_id,
        "blueprint_id": r.blueprint_id,
        "observation_window_epochs": r.observation_window_epochs,
        "policy_version": r.policy_version,
        "issued_at": _time(r.issued_at_ns),
        "priority": pb.MessagePriority.Name(entry.priority),  # type: ignore[arg-type]
        "parked_after_attempts": entry.attempts if entry.state is ReportState.PARKED else None,
        "acked_by": entry.acked_by or None,
        "acked_at": _time(entry.acked_at_ns) if entry.acked_at_ns else None,
        "metrics": dict(sorted(r.metrics.items())),
    }


def _print_table(entries: list[ReportEntry]) -> None:
    print(f"{'report id':<36} {'state':<8} {'outcome':<29} {'command id':<28} {'run'}")
    for entry in entries:
        r = entry.report
        outcome = pb.FieldReportOutcome.Name(r.outcome)
        print(
            f"{r.report_id:<36} {entry.state.value:<8} {outcome:<29} "
            f"{r.command_id:<28} {r.training_run_id}"
        )


def _load(args: argparse.Namespace) -> LogView | None:
    wal_dir = Path(args.wal_dir)
    if not wal_dir.is_dir():
        print(f"no field-report log in {wal_dir} (set --wal-dir or TAMIYO_DATA_DIR)")
        return None
    return LogView(wal_dir)


def _summary(view: LogView) -> str:
    counts = view.state.book.counts()
    parts = [f"{counts[s]} {s.value}" for s in ReportState]
    line = (
        f"{', '.join(parts)}; {len(view.state.tracker)} windows open; "
        f"{view.records} records in {view.segments} segments"
    )
    if view.unreported:
        line += f"; {len(view.unreported)} closed windows reported at the next start"
    if view.corrupt_regions:
        line += f"; {view.corrupt_regions} unreadable regions skipped"
    return line


def run_list(args: argparse.Namespace) -> int:
    view = _load(args)
    if view is None:
        return 1
    state = ReportState(args.state) if args.state else None
    entries = view.entries(state)
    if args.json:
        print(orjson.dumps([_as_dict(e) for e in entries]).decode())
        return 0
    _print_table(entries)
    print(_summary(view))
    return 0


def run_parked(args: argparse.Namespace) -> int:
    args.state = ReportState.PARKED.value
    return run_list(args)


def run_show(args: argparse.Namespace) -> int:
    view = _load(args)
    if view is None:
        return 1
    entry = view.state.book.get(args.report_id)
    if entry is None:
        print(f"no report {args.report_id} in the log (unknown, or acked and compacted away)")
        return 1
    data = _as_dict(entry)
    if args.json:
        print(orjson.dumps(data).decode())
        return 0
    metrics = data.pop("metrics")
    for key, value in data.items():
        if value is not None:
            print(f"{key:<27} {value}")
    print("metrics")
    for key, value in metrics.items():
        print(f"  {key:<25} {value:g}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    wal_dir = Path(args.wal_dir)
    view = _load(args)
    if view is None:
        return 1
    if args.all:
        parked = view.entries(ReportState.PARKED)
        request_retry(wal_dir, ALL)
        print(f"retry requested for every parked report ({len(parked)} now)")
        return 0
    if not args.report_ids:
        print("name report ids, or --all")
        return 1
    status = 0
    for report_id in args.report_ids:
        state = view.state.book.state_of(report_id)
        if not valid_target(report_id) or state is None:
            print(f"{report_id}: no such report in the log")
            status = 1
        elif state is ReportState.ACKED:
            print(f"{report_id}: already acknowledged; nothing to retry")
        else:
            request_retry(wal_dir, report_id)
            print(f"{report_id}: retry requested ({state.value})")
    return status


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("reports", help="field reports: list, show, parked, retry")
    parser.add_argument(
        "--wal-dir",
        default=str(default_wal_dir()),
        help="the field-report log directory (default: $TAMIYO_DATA_DIR/reports)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="reports in the log, oldest first")
    listing.add_argument("--state", choices=[s.value for s in ReportState])
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(run=run_list)

    parked = actions.add_parser("parked", help="reports parked after their retries ran out")
    parked.add_argument("--json", action="store_true", help="one JSON array")
    parked.set_defaults(run=run_parked)

    show = actions.add_parser("show", help="one report with its metrics and delivery state")
    show.add_argument("report_id")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(run=run_show)

    retry = actions.add_parser("retry", help="publish parked (or pending) reports again now")
    retry.add_argument("report_ids", nargs="*", metavar="REPORT_ID")
    retry.add_argument("--all", action="store_true", help="every parked report")
    retry.set_defaults(run=run_retry)
