"""The one reward Tamiyo learns from: what a field report observes of a decision.

    reward = loss_weight      * -log(loss_after / loss_before)
           + accuracy_weight  * (accuracy_after - accuracy_before)
           - parameter_weight * parameter_ratio
           - rollback_penalty * rollbacks
           - emergency_penalty * emergencies
           - isolation_violation_penalty * isolation_violations

A term whose figure was not observed (no loss before the decision, no accuracy yet)
counts 0. The loss enters as a log ratio, so a halving of the loss is worth the same
early and late in a run, and so rewards over consecutive intervals add up to the
reward of the whole span.

Two uses, one function (:func:`reward`), two ways of measuring its terms:

- per field report (:meth:`RewardTerms.of_report`): the changes over the report's
  observation window, ``parameter_ratio`` the acted-on seed's parameters over the
  model's, the risk events the window saw;
- per decision interval of the RL loop (:func:`interval_terms`): the changes between
  two consecutive decision packets (the training loss there is the running average
  the packet carries; validation accuracy moves at epoch ends), ``parameter_ratio``
  the *change* of all live seeds' share of the model's parameters (a seed is charged
  when it appears and refunded when it is culled), and the risk events between the two
  packets. Summed over an episode, the interval rewards are the same formula applied
  to the whole run: its loss log-ratio, its accuracy gain since the first evaluation,
  the seeds' share it ends with, and every risk event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import HAS_MODULE
from tamiyo_bus.reports.windows import MODEL_PARAMETERS_METRIC, SEED_PARAMETERS_METRIC

ISOLATION_VIOLATIONS_METRIC = "isolation_violations"
"""FieldReport metric: isolation violations of the acted-on seed within the window
(absent counts 0)."""


@dataclass(frozen=True)
class RewardSettings:
    """Weights of the reward's terms (loss as a log ratio, accuracy as a fraction, the
    parameter ratio as a fraction of the model; penalties per event)."""

    loss_weight: float = 1.0
    accuracy_weight: float = 1.0
    parameter_weight: float = 1.0
    rollback_penalty: float = 0.25
    emergency_penalty: float = 1.0
    isolation_violation_penalty: float = 0.25

    def __post_init__(self) -> None:
        weights = (
            self.loss_weight,
            self.accuracy_weight,
            self.parameter_weight,
            self.rollback_penalty,
            self.emergency_penalty,
            self.isolation_violation_penalty,
        )
        if any(not (math.isfinite(w) and w >= 0) for w in weights):
            raise ValueError("reward weights must be finite and not negative")


@dataclass(frozen=True, slots=True)
class RewardTerms:
    """The observed figures a reward is made of (None: not observed).

    ``loss_change`` is relative ((after - before) / before), ``accuracy_change``
    absolute, ``parameter_ratio`` a fraction of the model's parameters.
    """

    loss_change: float | None = None
    accuracy_change: float | None = None
    parameter_ratio: float | None = None
    rollbacks: int = 0
    emergencies: int = 0
    isolation_violations: int = 0

    @classmethod
    def of_report(cls, report: pb.FieldReport) -> RewardTerms:
        """The terms a field report carries (see ``reports.windows.build_report``)."""
        metrics = report.metrics
        return cls(
            loss_change=metrics.get("loss_change"),
            accuracy_change=metrics.get("accuracy_change"),
            parameter_ratio=metrics.get("parameter_ratio"),
            rollbacks=round(metrics.get("rollbacks", 0.0)),
            emergencies=round(metrics.get("emergencies", 0.0)),
            isolation_violations=round(metrics.get(ISOLATION_VIOLATIONS_METRIC, 0.0)),
        )


def _observed(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else 0.0


def reward(terms: RewardTerms, settings: RewardSettings) -> float:
    """The reward of ``terms`` (the formula in the module docstring)."""
    loss = terms.loss_change
    loss_term = -math.log1p(loss) if loss is not None and math.isfinite(loss) and loss > -1 else 0.0
    return (
        settings.loss_weight * loss_term
        + settings.accuracy_weight * _observed(terms.accuracy_change)
        - settings.parameter_weight * _observed(terms.parameter_ratio)
        - settings.rollback_penalty * terms.rollbacks
        - settings.emergency_penalty * terms.emergencies
        - settings.isolation_violation_penalty * terms.isolation_violations
    )


def report_reward(report: pb.FieldReport, settings: RewardSettings) -> float:
    """The reward of one field report's decision."""
    return reward(RewardTerms.of_report(report), settings)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run stands at one decision packet (nan: not reported yet)."""

    loss: float  # the packet's training_loss (running average of the batch losses)
    accuracy: float  # the last validation accuracy
    parameter_ratio: float  # live seeds' parameters / the model's (host plus seeds)

    @classmethod
    def of_packet(cls, packet: pb.SystemStatePacket) -> Progress:
        model = packet.training_metrics.get(MODEL_PARAMETERS_METRIC, math.nan)
        seeds = sum(
            s.metrics.get(SEED_PARAMETERS_METRIC, 0.0)
            for s in packet.seed_states
            if s.stage in HAS_MODULE
        )
        return cls(
            loss=packet.training_loss,
            accuracy=packet.validation_accuracy,
            parameter_ratio=seeds / model if model > 0 else 0.0,
        )


def _change(before: float, after: float) -> float | None:
    return after - before if math.isfinite(before) and math.isfinite(after) else None


def interval_terms(
    before: Progress,
    after: Progress,
    *,
    rollbacks: int = 0,
    emergencies: int = 0,
    isolation_violations: int = 0,
) -> RewardTerms:
    """The terms of one decision interval: from the packet a decision was made on to
    the next decision's packet, with the risk events in between."""
    loss_change = None
    if math.isfinite(before.loss) and before.loss > 0 and math.isfinite(after.loss):
        loss_change = after.loss / before.loss - 1.0
    return RewardTerms(
        loss_change=loss_change,
        accuracy_change=_change(before.accuracy, after.accuracy),
        parameter_ratio=_change(before.parameter_ratio, after.parameter_ratio),
        rollbacks=rollbacks,
        emergencies=emergencies,
        isolation_violations=isolation_violations,
    )
