"""Observation windows: one per decision that acted, counted in epochs, closed into a
FieldReport by documented thresholds.

Everything here is pure (no IO, no clock, no threads), so the same code runs on the
writer thread and during recovery, when the write-ahead log is replayed in order and
must rebuild exactly the windows that were open.

Counting. A decision taken during epoch E opens a window of N epochs (the setting at
the time it opened, kept with the window). The epoch it acted in does not count, since
only part of it ran after the decision; the window closes at the end of epoch E + N,
so at least N whole epochs are observed. Epochs are counted by their number, never by
calls: a repeated epoch end is ignored, and a skipped one is caught up by the next.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind

SEED_PARAMETERS_METRIC = "parameter_count"
"""Key in `SeedState.metrics`: the seed's trainable parameters."""
MODEL_PARAMETERS_METRIC = "model_parameter_count"
"""Key in `SystemStatePacket.training_metrics`: the host model's parameters."""

ABORTING_STAGES = frozenset(
    {
        pb.SEED_STAGE_CULLED,
        pb.SEED_STAGE_TERMINATED,
        pb.SEED_STAGE_EMBARGOED,
        pb.SEED_STAGE_RESETTING,
    }
)
"""A target seed seen in one of these stages did not run its course: ABORTED."""

NON_ACTING = frozenset({pb.COMMAND_TYPE_UNKNOWN, pb.COMMAND_TYPE_NO_OP})


@dataclass(frozen=True)
class WindowSettings:
    """Window length and the outcome thresholds (see `synthesise` for the rules).

    Loss changes are relative to the loss at the decision (0.02 = 2 %); accuracy
    changes are absolute (0.01 = one percentage point); the parameter ratio is the
    seed's parameters over the host model's.
    """

    window_epochs: int = 3
    regression_loss_increase: float = 0.02
    regression_accuracy_drop: float = 0.01
    regression_breaker_opens: int = 1
    regression_risk_events: int = 3
    success_loss_decrease: float = 0.01
    success_accuracy_gain: float = 0.005
    success_max_parameter_ratio: float = 0.10

    def __post_init__(self) -> None:
        if self.window_epochs < 1:
            raise ValueError(f"window_epochs must be >= 1, got {self.window_epochs}")
        if self.regression_breaker_opens < 1 or self.regression_risk_events < 1:
            raise ValueError("event thresholds must be >= 1")


def report_id_for(training_run_id: str, command_id: str) -> str:
    """The report id of a command: stable across restarts, unique across runs.

    Derived from the command id (unique by contract) and the run, never from a
    position in a list, so two processes or two restarts name the same report alike.
    """
    digest = hashlib.blake2b(
        f"{training_run_id}\x00{command_id}".encode(), digest_size=16
    ).hexdigest()
    return f"fr-{digest}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _loss_of(state: pb.SystemStatePacket) -> float | None:
    """Validation loss when reported (> 0), else training loss, else unknown."""
    for value in (state.validation_loss, state.training_loss):
        if math.isfinite(value) and value > 0:
            return float(value)
    return None


@dataclass(frozen=True)
class Decision:
    """What a window keeps of the command that opened it and of the state it acted on."""

    report_id: str
    command_id: str
    training_run_id: str
    seed_id: str
    blueprint_id: str
    command_type: int
    policy_version: int
    epoch: int
    loss: float | None
    accuracy: float | None
    window_epochs: int

    @classmethod
    def from_command(
        cls, command: pb.AdaptationCommand, state: pb.SystemStatePacket, window_epochs: int
    ) -> Decision | None:
        """The decision to observe, or None when the command did not act (NO_OP)."""
        if command.command_type in NON_ACTING:
            return None
        run = command.training_run_id or state.training_run_id
        seed_id = command.target_seed_id
        blueprint = command.seed.blueprint_id if command.HasField("seed") else ""
        if not blueprint and seed_id:
            for seed in state.seed_states:
                if seed.seed_id == seed_id:
                    blueprint = seed.blueprint_id
                    break
        return cls(
            report_id=report_id_for(run, command.command_id),
            command_id=command.command_id,
            training_run_id=run,
            seed_id=seed_id,
            blueprint_id=blueprint,
            command_type=int(command.command_type),
            policy_version=int(command.policy_version),
            epoch=int(state.current_epoch),
            loss=_loss_of(state),
            accuracy=_finite(float(state.validation_accuracy)),
            window_epochs=window_epochs,
        )


@dataclass(frozen=True)
class EpochEnd:
    """The end of one epoch: its number, metrics, and each seed's (stage, parameters)."""

    training_run_id: str
    epoch: int
    loss: float | None
    accuracy: float | None
    model_parameters: float | None
    seeds: dict[str, tuple[int, float | None]]

    @classmethod
    def from_state(cls, state: pb.SystemStatePacket) -> EpochEnd:
        """`state.current_epoch` is the epoch that just ended."""
        model = state.training_metrics.get(MODEL_PARAMETERS_METRIC)
        seeds: dict[str, tuple[int, float | None]] = {}
        for seed in state.seed_states:
            params = seed.metrics.get(SEED_PARAMETERS_METRIC)
            seeds[seed.seed_id] = (int(seed.stage), None if params is None else float(params))
        return cls(
            training_run_id=state.training_run_id,
            epoch=int(state.current_epoch),
            loss=_loss_of(state),
            accuracy=_finite(float(state.validation_accuracy)),
            model_parameters=None if model is None else float(model),
            seeds=seeds,
        )


@dataclass(frozen=True)
class ObservedEvent:
    """A breaker or risk event; with a seed id it concerns only windows on that seed."""

    training_run_id: str
    kind: EventKind
    seed_id: str = ""
    priority: int = pb.MESSAGE_PRIORITY_NORMAL


@dataclass
class Window:
    """One open observation window and what it has seen so far."""

    decision: Decision
    opened_seq: int
    last_epoch: int
    final_loss: float | None = None
    final_accuracy: float | None = None
    seed_stage: int | None = None
    seed_aborted: bool = False
    seed_parameters: float | None = None
    model_parameters: float | None = None
    events: Counter[EventKind] = field(default_factory=Counter)
    critical: bool = False
    truncated: bool = False

    @property
    def epochs_observed(self) -> int:
        return self.last_epoch - self.decision.epoch

    @property
    def complete(self) -> bool:
        return self.epochs_observed >= self.decision.window_epochs

    def observe_epoch(self, end: EpochEnd) -> None:
        self.last_epoch = end.epoch
        if end.loss is not None:
            self.final_loss = end.loss
        if end.accuracy is not None:
            self.final_accuracy = end.accuracy
        if end.model_parameters is not None:
            self.model_parameters = end.model_parameters
        seed = end.seeds.get(self.decision.seed_id) if self.decision.seed_id else None
        if seed is not None:
            stage, params = seed
            self.seed_stage = stage
            self.seed_aborted = self.seed_aborted or stage in ABORTING_STAGES
            if params is not None:
                self.seed_parameters = params

    def observe_event(self, event: ObservedEvent) -> None:
        self.events[event.kind] += 1
        if event.priority == pb.MESSAGE_PRIORITY_CRITICAL or event.kind is EventKind.EMERGENCY:
            self.critical = True


@dataclass(frozen=True)
class Observed:
    """The figures an outcome is decided from (None: not observed)."""

    loss_change: float | None = None
    accuracy_change: float | None = None
    parameter_ratio: float | None = None
    breaker_opens: int = 0
    risk_events: int = 0
    rollbacks: int = 0
    emergencies: int = 0
    seed_aborted: bool = False
    truncated: bool = False
    epochs_observed: int = 0

    @classmethod
    def of(cls, window: Window) -> Observed:
        before, after = window.decision.loss, window.final_loss
        loss_change = (after - before) / before if before and after is not None else None
        acc_before, acc_after = window.decision.accuracy, window.final_accuracy
        accuracy_change = (
            acc_after - acc_before if acc_before is not None and acc_after is not None else None
        )
        ratio = None
        if window.seed_parameters is not None and window.model_parameters:
            ratio = window.seed_parameters / window.model_parameters
        return cls(
            loss_change=loss_change,
            accuracy_change=accuracy_change,
            parameter_ratio=ratio,
            breaker_opens=window.events[EventKind.BREAKER_OPENED],
            risk_events=window.events[EventKind.RISK_ELEVATED],
            rollbacks=window.events[EventKind.ROLLBACK],
            emergencies=window.events[EventKind.EMERGENCY],
            seed_aborted=window.seed_aborted,
            truncated=window.truncated,
            epochs_observed=max(window.epochs_observed, 0),
        )


def synthesise_outcome(
    observed: Observed, settings: WindowSettings
) -> pb.FieldReportOutcome.ValueType:
    """The outcome by the first rule that matches, in this order:

    1. ABORTED: the target seed was culled, terminated, embargoed or reset, a rollback
       or emergency happened, or the run ended before one whole epoch was observed. A
       window the run's end cut short after that is judged by the rules below on what
       it saw (its report says `truncated` and how many epochs it observed): the end
       of a run says nothing about the decision.
    2. REGRESSION: loss rose by >= `regression_loss_increase`, accuracy fell by
       >= `regression_accuracy_drop`, or >= `regression_breaker_opens` breakers opened,
       or >= `regression_risk_events` elevated-risk events were seen.
    3. SUCCESS: loss fell by >= `success_loss_decrease` or accuracy rose by
       >= `success_accuracy_gain`, at a parameter ratio <= `success_max_parameter_ratio`
       (an unknown ratio counts as no cost).
    4. NEUTRAL: anything else, including a window whose metrics were never reported.
    """
    unobserved = observed.truncated and observed.epochs_observed == 0
    if unobserved or observed.seed_aborted or observed.rollbacks or observed.emergencies:
        return pb.FIELD_REPORT_OUTCOME_ABORTED
    loss, acc = observed.loss_change, observed.accuracy_change
    if (
        (loss is not None and loss >= settings.regression_loss_increase)
        or (acc is not None and -acc >= settings.regression_accuracy_drop)
        or observed.breaker_opens >= settings.regression_breaker_opens
        or observed.risk_events >= settings.regression_risk_events
    ):
        return pb.FIELD_REPORT_OUTCOME_REGRESSION
    improved = (loss is not None and -loss >= settings.success_loss_decrease) or (
        acc is not None and acc >= settings.success_accuracy_gain
    )
    affordable = (
        observed.parameter_ratio is None
        or observed.parameter_ratio <= settings.success_max_parameter_ratio
    )
    if improved and affordable:
        return pb.FIELD_REPORT_OUTCOME_SUCCESS
    return pb.FIELD_REPORT_OUTCOME_NEUTRAL


def report_priority(
    window: Window, outcome: pb.FieldReportOutcome.ValueType
) -> pb.MessagePriority.ValueType:
    """CRITICAL after an emergency (its WAL record is fsynced at once, whatever the
    policy); HIGH for regressions and aborts; NORMAL otherwise."""
    if window.critical or window.decision.command_type == pb.COMMAND_TYPE_EMERGENCY:
        return pb.MESSAGE_PRIORITY_CRITICAL
    if outcome in (pb.FIELD_REPORT_OUTCOME_REGRESSION, pb.FIELD_REPORT_OUTCOME_ABORTED):
        return pb.MESSAGE_PRIORITY_HIGH
    return pb.MESSAGE_PRIORITY_NORMAL


def build_report(
    window: Window, settings: WindowSettings, issued_at_ns: int
) -> tuple[pb.FieldReport, pb.MessagePriority.ValueType]:
    """The FieldReport of a closed window, with the observations behind its outcome."""
    observed = Observed.of(window)
    outcome = synthesise_outcome(observed, settings)
    d = window.decision
    metrics: dict[str, float] = {
        "window_epochs": float(d.window_epochs),
        "opened_epoch": float(d.epoch),
        "last_epoch": float(window.last_epoch),
        "breaker_opens": float(observed.breaker_opens),
        "risk_events": float(observed.risk_events),
        "rollbacks": float(observed.rollbacks),
        "emergencies": float(observed.emergencies),
        "truncated": float(observed.truncated),
    }
    optional = {
        "loss_before": d.loss,
        "loss_after": window.final_loss,
        "loss_change": observed.loss_change,
        "accuracy_before": d.accuracy,
        "accuracy_after": window.final_accuracy,
        "accuracy_change": observed.accuracy_change,
        "parameter_ratio": observed.parameter_ratio,
        "seed_stage": None if window.seed_stage is None else float(window.seed_stage),
    }
    metrics.update({k: v for k, v in optional.items() if v is not None})
    report = pb.FieldReport(
        report_id=d.report_id,
        command_id=d.command_id,
        training_run_id=d.training_run_id,
        seed_id=d.seed_id,
        blueprint_id=d.blueprint_id,
        outcome=outcome,
        metrics=metrics,
        observation_window_epochs=max(window.epochs_observed, 0),
        issued_at_ns=issued_at_ns,
        policy_version=d.policy_version,
    )
    return report, report_priority(window, outcome)


class WindowTracker:
    """The open windows, keyed by report id. Owned by one thread (the writer)."""

    def __init__(self) -> None:
        self._open: dict[str, Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, report_id: object) -> bool:
        return report_id in self._open

    def windows(self) -> Iterable[Window]:
        return self._open.values()

    def open(self, decision: Decision, seq: int) -> Window | None:
        """Open a window; None when one is already open for the same report id."""
        if decision.report_id in self._open:
            return None
        window = Window(decision, seq, last_epoch=decision.epoch)
        self._open[decision.report_id] = window
        return window

    def epoch_end(self, end: EpochEnd) -> list[Window]:
        """Apply an epoch end; returns the windows it closed."""
        closed = []
        for window in self._open.values():
            if window.decision.training_run_id != end.training_run_id:
                continue
            if end.epoch <= window.last_epoch:
                continue
            window.observe_epoch(end)
            if window.complete:
                closed.append(window)
        for window in closed:
            del self._open[window.decision.report_id]
        return closed

    def event(self, event: ObservedEvent) -> None:
        for window in self._open.values():
            if window.decision.training_run_id != event.training_run_id:
                continue
            if event.seed_id and event.seed_id != window.decision.seed_id:
                continue
            window.observe_event(event)

    def run_end(self, training_run_id: str) -> list[Window]:
        """Close every window of a run that ended, marked truncated (cut short)."""
        closed = [w for w in self._open.values() if w.decision.training_run_id == training_run_id]
        for window in closed:
            window.truncated = True
            del self._open[window.decision.report_id]
        return closed

    def forget(self, report_id: str) -> None:
        self._open.pop(report_id, None)

    def min_open_seq(self, training_run_id: str) -> int | None:
        """The log position of the oldest window of a run still open: observations
        logged after it are needed to rebuild that window."""
        seqs = [
            w.opened_seq
            for w in self._open.values()
            if w.decision.training_run_id == training_run_id
        ]
        return min(seqs) if seqs else None

    def seeds_watched(self, training_run_id: str) -> set[str]:
        return {
            w.decision.seed_id
            for w in self._open.values()
            if w.decision.training_run_id == training_run_id and w.decision.seed_id
        }
