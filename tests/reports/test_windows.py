"""Observation windows: counted in epochs, one per acting decision, overlapping, and
the outcome rules, table-driven."""

from __future__ import annotations

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.reports.windows import (
    Decision,
    EpochEnd,
    EventKind,
    Observed,
    ObservedEvent,
    WindowSettings,
    WindowTracker,
    build_report,
    report_id_for,
    synthesise_outcome,
)

from .helpers import RUN, command, state

SETTINGS = WindowSettings()
SUCCESS = pb.FIELD_REPORT_OUTCOME_SUCCESS
NEUTRAL = pb.FIELD_REPORT_OUTCOME_NEUTRAL
REGRESSION = pb.FIELD_REPORT_OUTCOME_REGRESSION
ABORTED = pb.FIELD_REPORT_OUTCOME_ABORTED


def decision(index: int, epoch: int, window_epochs: int = 3, **kwargs: object) -> Decision:
    d = Decision.from_command(command(index, **kwargs), state(epoch), window_epochs)  # type: ignore[arg-type]
    assert d is not None
    return d


def test_a_window_counts_epochs_not_calls() -> None:
    tracker = WindowTracker()
    tracker.open(decision(1, epoch=5), seq=1)

    for _ in range(50):  # many calls within the same epochs close nothing
        assert tracker.epoch_end(EpochEnd.from_state(state(5))) == []
        assert tracker.epoch_end(EpochEnd.from_state(state(6))) == []
        assert tracker.epoch_end(EpochEnd.from_state(state(7))) == []
    # the decision's own epoch (5) is partial; 6, 7 and 8 are the three whole epochs
    [closed] = tracker.epoch_end(EpochEnd.from_state(state(8)))
    assert closed.epochs_observed == 3
    assert len(tracker) == 0


def test_a_skipped_epoch_end_is_caught_up_by_the_next() -> None:
    tracker = WindowTracker()
    tracker.open(decision(1, epoch=0), seq=1)
    [closed] = tracker.epoch_end(EpochEnd.from_state(state(4)))  # 1..3 never reported
    assert closed.epochs_observed == 4


def test_windows_overlap_one_per_decision_and_close_on_their_own_schedule() -> None:
    tracker = WindowTracker()
    for index, epoch in enumerate([0, 0, 1, 2]):
        assert tracker.open(decision(index, epoch, window_epochs=2), seq=index + 1) is not None
    assert tracker.open(decision(0, 0, window_epochs=2), seq=9) is None  # same command
    closed_at = {}
    for epoch in range(1, 6):
        for window in tracker.epoch_end(EpochEnd.from_state(state(epoch))):
            closed_at[window.decision.command_id] = epoch
    assert closed_at == {"cmd-000000": 2, "cmd-000001": 2, "cmd-000002": 3, "cmd-000003": 4}


def test_window_length_is_configurable_but_at_least_one_epoch() -> None:
    tracker = WindowTracker()
    tracker.open(decision(1, epoch=3, window_epochs=1), seq=1)
    assert len(tracker.epoch_end(EpochEnd.from_state(state(4)))) == 1
    with pytest.raises(ValueError, match="window_epochs"):
        WindowSettings(window_epochs=0)


def test_no_op_opens_no_window() -> None:
    no_op = command(1, command_type=pb.COMMAND_TYPE_NO_OP)
    assert Decision.from_command(no_op, state(0), 3) is None


def test_other_runs_epochs_and_events_do_not_touch_a_window() -> None:
    tracker = WindowTracker()
    tracker.open(decision(1, epoch=0, window_epochs=1), seq=1)
    tracker.event(ObservedEvent("other-run", EventKind.BREAKER_OPENED))
    tracker.event(ObservedEvent(RUN, EventKind.BREAKER_OPENED, seed_id="another-seed"))
    assert tracker.epoch_end(EpochEnd.from_state(state(1, run="other-run"))) == []
    [closed] = tracker.epoch_end(EpochEnd.from_state(state(1)))
    assert sum(closed.events.values()) == 0


def test_report_ids_derive_from_the_command_and_run() -> None:
    first = report_id_for("run-a", "cmd-1")
    assert first == report_id_for("run-a", "cmd-1")  # stable: same inputs, same id
    assert first.startswith("fr-") and len(first) == 35
    ids = {report_id_for(run, f"cmd-{i}") for run in ("run-a", "run-b") for i in range(1_000)}
    assert len(ids) == 2_000  # unique: no list indices, no collisions across runs


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (Observed(), NEUTRAL),
        (Observed(loss_change=-0.05), SUCCESS),
        (Observed(loss_change=-0.01), SUCCESS),
        (Observed(loss_change=-0.009), NEUTRAL),
        (Observed(accuracy_change=0.005), SUCCESS),
        (Observed(accuracy_change=0.004), NEUTRAL),
        (Observed(loss_change=-0.05, parameter_ratio=0.10), SUCCESS),
        (Observed(loss_change=-0.05, parameter_ratio=0.11), NEUTRAL),
        (Observed(loss_change=0.02), REGRESSION),
        (Observed(loss_change=0.019), NEUTRAL),
        (Observed(accuracy_change=-0.01), REGRESSION),
        (Observed(loss_change=-0.05, accuracy_change=-0.02), REGRESSION),
        (Observed(loss_change=-0.05, breaker_opens=1), REGRESSION),
        (Observed(risk_events=2), NEUTRAL),
        (Observed(risk_events=3), REGRESSION),
        (Observed(loss_change=-0.05, seed_aborted=True), ABORTED),
        (Observed(loss_change=-0.5, truncated=True), ABORTED),  # nothing seen yet
        (Observed(loss_change=-0.5, truncated=True, epochs_observed=1), SUCCESS),
        (Observed(loss_change=0.5, truncated=True, epochs_observed=2), REGRESSION),
        (Observed(rollbacks=1), ABORTED),
        (Observed(emergencies=1, loss_change=-0.2), ABORTED),
    ],
)
def test_outcome_rules(observed: Observed, expected: pb.FieldReportOutcome.ValueType) -> None:
    assert synthesise_outcome(observed, SETTINGS) == expected


def _closed_report(
    final: pb.SystemStatePacket, events: list[ObservedEvent] | None = None
) -> tuple[pb.FieldReport, pb.MessagePriority.ValueType]:
    tracker = WindowTracker()
    tracker.open(decision(1, epoch=0, window_epochs=1), seq=1)
    for event in events or []:
        tracker.event(event)
    [window] = tracker.epoch_end(EpochEnd.from_state(final))
    return build_report(window, SETTINGS, issued_at_ns=123)


def test_report_carries_what_was_observed() -> None:
    final = state(1, loss=0.9, accuracy=0.56, seeds={"seed-1": (pb.SEED_STAGE_BLENDING, 20_000.0)})
    report, priority = _closed_report(final)
    assert report.outcome == SUCCESS
    assert priority == pb.MESSAGE_PRIORITY_NORMAL
    assert report.report_id == report_id_for(RUN, "cmd-000001")
    assert (report.command_id, report.seed_id, report.blueprint_id) == (
        "cmd-000001", "seed-1", "bp-conv",
    )  # fmt: skip
    assert report.observation_window_epochs == 1
    assert report.policy_version == 7
    assert report.metrics["loss_change"] == pytest.approx(-0.1)
    assert report.metrics["accuracy_change"] == pytest.approx(0.06)
    assert report.metrics["parameter_ratio"] == pytest.approx(0.02)
    assert report.metrics["seed_stage"] == pb.SEED_STAGE_BLENDING


def test_culled_seed_aborts_and_emergency_makes_the_report_critical() -> None:
    culled = state(1, loss=0.5, seeds={"seed-1": (pb.SEED_STAGE_CULLED, 1.0)})
    report, priority = _closed_report(culled)
    assert (report.outcome, priority) == (ABORTED, pb.MESSAGE_PRIORITY_HIGH)
    emergency = ObservedEvent(RUN, EventKind.EMERGENCY, priority=pb.MESSAGE_PRIORITY_CRITICAL)
    report, priority = _closed_report(state(1), [emergency])
    assert (report.outcome, priority) == (ABORTED, pb.MESSAGE_PRIORITY_CRITICAL)


def test_run_end_closes_the_runs_windows_judged_on_what_they_saw() -> None:
    tracker = WindowTracker()
    tracker.open(decision(1, epoch=0), seq=1)
    tracker.open(decision(2, epoch=1), seq=2)
    tracker.open(decision(3, epoch=0, run="run-2"), seq=3)
    tracker.epoch_end(EpochEnd.from_state(state(1, loss=0.8)))
    closed = tracker.run_end(RUN)
    reports = {w.decision.command_id: build_report(w, SETTINGS, 1)[0] for w in closed}
    assert reports["cmd-000001"].outcome == SUCCESS  # one whole epoch seen: judged on it
    assert reports["cmd-000001"].observation_window_epochs == 1
    assert reports["cmd-000002"].outcome == ABORTED  # nothing whole seen: cut short
    assert all(r.metrics["truncated"] == 1.0 for r in reports.values())
    assert len(tracker) == 1  # the other run's window is untouched
