"""The FieldReporter without a bus: the step path never waits on the log, windows and
reports survive restarts with the same ids, acks retire reports, compaction."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.reports.records import Ack, Kind
from tamiyo_bus.reports.reporter import FieldReporter
from tamiyo_bus.reports.wal import FsyncPolicy, WalSettings, scan, segment_paths
from tamiyo_bus.reports.windows import ObservedEvent, report_id_for

from .helpers import RUN, command, fast_settings, state


def _report_ids(wal_dir: Path) -> list[str]:
    return [
        pb.FieldReport.FromString(r.body).report_id
        for r in scan(wal_dir, WalSettings()).records
        if r.kind == Kind.REPORT
    ]


def test_step_path_never_waits_on_a_blocked_fsync(tmp_path: Path) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def blocked_fsync(fd: int) -> None:
        entered.set()
        gate.wait()

    reporter = FieldReporter(
        fast_settings(tmp_path, queue_max_items=100), fsync=blocked_fsync
    ).start()
    try:
        assert reporter.on_command(command(0), state(0))
        assert entered.wait(5)  # the writer is now stuck inside fsync

        slowest = 0.0
        accepted = 0
        for i in range(1, 300):
            started = time.perf_counter()
            accepted += reporter.on_command(command(i), state(0))
            reporter.on_event(ObservedEvent(RUN, EventKind.RISK_ELEVATED))
            slowest = max(slowest, time.perf_counter() - started)
        # a bound, not a timing: fsync stays blocked until the end, so a call that
        # waited on it would never return; the margin only absorbs a loaded machine
        assert slowest < 0.5
        assert accepted < 299  # the queue filled up ...
        full = reporter.metrics.count("reports_queue_full")
        assert full == (299 - accepted) + reporter.metrics.count("reports_queue_full", kind="event")
        assert full > 0  # ... and every refused item is counted
    finally:
        gate.set()
    reporter.flush()
    assert len(reporter.tracker) == accepted + 1
    reporter.close()


def test_open_windows_and_report_ids_survive_a_restart(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    with FieldReporter(settings) as reporter:
        reporter.on_command(command(1), state(0, loss=1.0))
        reporter.on_epoch_end(state(1, loss=0.95))
        reporter.flush()
        assert reporter.book.entries() == []

    with FieldReporter(settings) as reporter:
        [window] = reporter.tracker.windows()
        assert window.last_epoch == 1
        assert window.final_loss == pytest.approx(0.95)
        assert not reporter.on_command(command(99, command_type=pb.COMMAND_TYPE_NO_OP), state(1))
        reporter.on_command(command(1), state(1))  # the trainer re-sends after its restart
        reporter.on_epoch_end(state(1, loss=0.5))  # an epoch already counted
        reporter.on_epoch_end(state(2, loss=0.9))
        reporter.flush()
        [entry] = reporter.book.entries()
        assert reporter.metrics.count("reports_duplicate_decisions") == 1

    assert entry.report_id == report_id_for(RUN, "cmd-000001")
    assert entry.report.outcome == pb.FIELD_REPORT_OUTCOME_SUCCESS  # 1.0 -> 0.9, not 0.5
    assert entry.report.observation_window_epochs == 2
    with FieldReporter(settings) as reporter:
        assert [e.report_id for e in reporter.book.entries(ReportState.PENDING)] == [
            entry.report_id
        ]
        assert reporter.book.get(entry.report_id) is not None
    assert _report_ids(tmp_path) == [entry.report_id]  # written once, never re-synthesised


def test_report_lost_in_a_torn_tail_is_synthesised_again_on_recovery(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    with FieldReporter(settings) as reporter:
        reporter.on_command(command(1), state(0))
        reporter.on_command(command(2), state(1))
        reporter.on_epoch_end(state(1))
        reporter.on_epoch_end(state(2))  # closes cmd 1's window: EPOCH then REPORT
        reporter.flush()
    [segment] = segment_paths(tmp_path)
    os.truncate(segment, segment.stat().st_size - 10)  # the REPORT write was cut short

    with FieldReporter(settings) as reporter:
        assert reporter.metrics.count("wal_corrupt_regions") == 1
        [entry] = reporter.book.entries()
        assert entry.report_id == report_id_for(RUN, "cmd-000001")
        assert [w.decision.command_id for w in reporter.tracker.windows()] == ["cmd-000002"]
    assert _report_ids(tmp_path) == [entry.report_id]


def test_events_reach_open_windows_and_run_end_reports_the_rest(tmp_path: Path) -> None:
    with FieldReporter(fast_settings(tmp_path)) as reporter:
        reporter.on_command(command(1, seed="a"), state(0))
        reporter.on_command(command(2, seed="b"), state(0))
        reporter.on_event(ObservedEvent(RUN, EventKind.BREAKER_OPENED, seed_id="a"))
        reporter.on_run_end(RUN)
        reporter.flush()
        outcomes = {e.report.seed_id: e.report.outcome for e in reporter.book.entries()}
        metrics = {e.report.seed_id: e.report.metrics for e in reporter.book.entries()}
    assert outcomes == {"a": pb.FIELD_REPORT_OUTCOME_ABORTED, "b": pb.FIELD_REPORT_OUTCOME_ABORTED}
    assert metrics["a"]["breaker_opens"] == 1.0 and metrics["b"]["breaker_opens"] == 0.0


def test_acked_reports_are_retired_after_retention_and_compacted_away(tmp_path: Path) -> None:
    now = [time.time_ns()]
    settings = fast_settings(tmp_path, retention_s=60.0, wal=WalSettings(segment_max_bytes=512))
    reporter = FieldReporter(settings, wall_ns=lambda: now[0]).start()
    for i in range(20):
        reporter.on_command(command(i), state(0))
    reporter.on_epoch_end(state(2))
    reporter.flush()
    entries = reporter.book.entries()
    assert len(entries) == 20
    acks = [Ack(e.report_id, now[0], "simic/test") for e in entries]
    assert reporter.record_acks(acks) == 20
    assert reporter.record_acks(acks[:3]) == 0  # a repeated ack retires nothing twice
    reporter.on_command(command(100), state(2))  # one window stays open
    reporter.flush()
    before = len(segment_paths(tmp_path))

    reporter.compact()  # within retention: acked reports are kept
    assert len(reporter.book.entries(ReportState.ACKED)) == 20

    now[0] += 61 * 10**9
    reporter.compact()
    assert reporter.book.entries() == []
    assert len(segment_paths(tmp_path)) < before
    reporter.close()

    reopened = FieldReporter(settings)
    assert reopened.book.entries() == []  # nothing acked comes back
    assert [w.decision.command_id for w in reopened.tracker.windows()] == ["cmd-000100"]
    reopened.close()


def test_writer_thread_survives_and_close_writes_everything_queued(tmp_path: Path) -> None:
    reporter = FieldReporter(fast_settings(tmp_path)).start()
    for i in range(50):
        reporter.on_command(command(i), state(0))
    reporter.on_epoch_end(state(2))
    reporter.close()
    assert not reporter.on_command(command(999), state(0))  # closed: refused, counted
    assert reporter.metrics.count("reports_offer_closed") == 1
    assert len(_report_ids(tmp_path)) == 50


def test_compaction_never_lets_a_closed_window_come_back(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, wal=WalSettings(segment_max_bytes=512))
    with FieldReporter(settings) as reporter:
        reporter.on_command(command(1), state(0))  # closes at epoch 2
        reporter.on_command(command(2, run="run-2"), state(0, run="run-2"))  # stays open
        reporter.flush()
        for epoch in range(1, 5):
            reporter.on_epoch_end(state(epoch))
            reporter.flush()
        [done] = reporter.book.entries()
        assert reporter.record_acks([Ack(done.report_id, 1, "simic/test")]) == 1
        first = min(reporter.wal.segments())
        assert len(reporter.wal.segments()[first]) == 3  # both OPENs and epoch 1
        reporter.compact()
        assert first.exists()  # kept for the open window's OPEN, so cmd 1's OPEN too ...
        assert reporter.book.state_of(done.report_id) is ReportState.ACKED  # ... and REPORT

    with FieldReporter(settings) as reporter:
        assert [w.decision.command_id for w in reporter.tracker.windows()] == ["cmd-000002"]
        assert reporter.book.state_of(done.report_id) is ReportState.ACKED


def test_interval_policy_syncs_from_the_writer_without_further_traffic(tmp_path: Path) -> None:
    synced = threading.Event()
    interval = WalSettings(fsync_policy=FsyncPolicy.INTERVAL, fsync_interval_ms=20.0)
    reporter = FieldReporter(
        fast_settings(tmp_path, wal=interval), fsync=lambda fd: synced.set()
    ).start()
    assert reporter.on_command(command(1), state(0))
    assert synced.wait(5)  # nothing else happened: the writer's own timer synced it
    reporter.close()
    assert reporter.metrics.count("wal_fsyncs") == 1  # one sync; close found nothing left
