"""`tamiyo-bus reports list|show|parked|retry` against a real log, beside its owner."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.reports.records import Ack
from tamiyo_bus.reports.reporter import FieldReporter
from weatherlight import reports_cli as cli

from .helpers import command, fast_settings, state, wait_until


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


def _log_with_every_state(wal_dir: Path) -> tuple[FieldReporter, list[str]]:
    """A running reporter holding one pending, one parked and one acked report, and one
    open window."""
    reporter = FieldReporter(fast_settings(wal_dir)).start()
    for i in range(3):
        reporter.on_command(command(i), state(0, loss=1.0))
    reporter.on_epoch_end(state(2, loss=0.8))
    reporter.on_command(command(3), state(2))
    reporter.flush()
    pending, parked, acked = (e.report_id for e in reporter.book.entries())
    reporter.park([e for e in reporter.book.entries() if e.report_id == parked])
    reporter.record_acks([Ack(acked, 1, "simic/simic-1")])
    return reporter, [pending, parked, acked]


def test_list_show_and_parked_read_the_log_beside_its_running_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reporter, (pending, parked, acked) = _log_with_every_state(tmp_path)

    assert _run("reports", "--wal-dir", str(tmp_path), "list") == 0
    out = capsys.readouterr().out
    assert all(i in out for i in (pending, parked, acked))
    assert "1 pending, 1 parked, 1 acked; 1 windows open" in out

    assert _run("reports", "--wal-dir", str(tmp_path), "parked", "--json") == 0
    [row] = orjson.loads(capsys.readouterr().out)
    assert (row["report_id"], row["state"]) == (parked, "parked")

    assert _run("reports", "--wal-dir", str(tmp_path), "show", acked, "--json") == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["state"] == "acked" and shown["acked_by"] == "simic/simic-1"
    assert shown["outcome"] == "FIELD_REPORT_OUTCOME_SUCCESS"
    assert shown["metrics"]["loss_change"] == pytest.approx(-0.2)

    assert _run("reports", "--wal-dir", str(tmp_path), "show", "fr-" + "0" * 32) == 1
    reporter.close()


def test_retry_asks_the_running_owner_which_unparks_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reporter, (_, parked, acked) = _log_with_every_state(tmp_path)

    assert _run("reports", "--wal-dir", str(tmp_path), "retry", parked, acked) == 0
    out = capsys.readouterr().out
    assert f"{parked}: retry requested (parked)" in out
    assert f"{acked}: already acknowledged" in out
    wait_until(lambda: reporter.book.state_of(parked) is ReportState.PENDING)
    assert reporter.metrics.count("reports_retry_requested") == 1
    assert not (tmp_path / "retry-requests" / parked).exists()

    assert _run("reports", "--wal-dir", str(tmp_path), "retry", "fr-" + "1" * 32) == 1
    reporter.close()


def test_retry_all_waits_for_the_next_start_when_no_owner_runs(tmp_path: Path) -> None:
    reporter, (_, parked, _) = _log_with_every_state(tmp_path)
    reporter.close()

    assert _run("reports", "--wal-dir", str(tmp_path), "retry", "--all") == 0
    with FieldReporter(fast_settings(tmp_path)) as restarted:
        wait_until(lambda: restarted.book.state_of(parked) is ReportState.PENDING)
    assert cli.LogView(tmp_path).state.book.state_of(parked) is ReportState.PENDING


def test_a_missing_log_is_reported_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("reports", "--wal-dir", str(tmp_path / "absent"), "list") == 1
    assert "no field-report log" in capsys.readouterr().out
