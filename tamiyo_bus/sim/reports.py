"""Field reports of simulated runs, by the real observation-window code.

``reports.windows`` is pure, so the simulator drives it exactly as the reporter's writer
thread does (without the log and the bus): a window opens for every applied command
that acts, epoch ends and risk events are observed, a closed window becomes a
FieldReport by ``build_report``. One addition the real reporter does not make yet:
each report carries ``isolation_violations``, the acted-on seed's violations within
its window, which the reward penalises.
"""

from __future__ import annotations

from collections import Counter

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from tamiyo_bus.learning.reward import ISOLATION_VIOLATIONS_METRIC
from tamiyo_bus.reports.windows import (
    Decision,
    EpochEnd,
    ObservedEvent,
    Window,
    WindowSettings,
    WindowTracker,
    build_report,
)


class SimReports:
    """The open windows of every simulated run and the reports they closed into."""

    def __init__(self, settings: WindowSettings) -> None:
        self.settings = settings
        self.tracker = WindowTracker()
        self._violations: Counter[str] = Counter()
        self._seq = 0

    def on_command(self, command: pb.AdaptationCommand, state: pb.SystemStatePacket) -> None:
        """An applied command acted on ``state`` (a NO_OP opens no window)."""
        decision = Decision.from_command(command, state, self.settings.window_epochs)
        if decision is not None:
            self._seq += 1
            self.tracker.open(decision, self._seq)

    def on_event(self, training_run_id: str, kind: EventKind, seed_id: str = "") -> None:
        self.tracker.event(ObservedEvent(training_run_id, kind, seed_id))

    def on_isolation_violation(self, training_run_id: str, seed_id: str) -> None:
        for window in self.tracker.windows():
            decision = window.decision
            if decision.training_run_id == training_run_id and decision.seed_id == seed_id:
                self._violations[decision.report_id] += 1

    def on_epoch_end(self, state: pb.SystemStatePacket, issued_at_ns: int) -> list[pb.FieldReport]:
        """``state.current_epoch`` ended; the reports of the windows it closed."""
        return self._reports(self.tracker.epoch_end(EpochEnd.from_state(state)), issued_at_ns)

    def on_run_end(self, training_run_id: str, issued_at_ns: int) -> list[pb.FieldReport]:
        """The run ended: its open windows close, truncated."""
        return self._reports(self.tracker.run_end(training_run_id), issued_at_ns)

    def _reports(self, windows: list[Window], issued_at_ns: int) -> list[pb.FieldReport]:
        reports = []
        for window in windows:
            report, _ = build_report(window, self.settings, issued_at_ns)
            violations = self._violations.pop(report.report_id, 0)
            report.metrics[ISOLATION_VIOLATIONS_METRIC] = float(violations)
            reports.append(report)
        return reports
