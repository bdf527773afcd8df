"""The learner's figures as gauges of its telemetry, and Nissa's default alert on
repeated candidate rejections."""

from __future__ import annotations

import math

from consumers.nissa.rules import DEFAULT_RULES, AlertEngine, AlertSettings
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import (
    METRIC_LEARNER_CANDIDATES,
    METRIC_LEARNER_EXPERIENCE,
    METRIC_LEARNER_POLICY_LOSS,
    METRIC_LEARNER_REJECTED_IN_ROW,
    METRIC_LEARNER_UPDATES,
)
from tamiyo_bus.learning.learner import PPOUpdateStats
from tamiyo_bus.simic.learner import LearnerStats
from tamiyo_bus.simic.state import LearnerProgress
from weatherlight.learner import UPDATE_GAUGES, learner_gauges


class Gauges:
    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] = value


def update(policy_loss: float = 0.5) -> PPOUpdateStats:
    return PPOUpdateStats(
        policy_loss=policy_loss, value_loss=1.0, entropy=2.0, approx_kl=0.01, clip_fraction=0.1,
        explained_variance=0.3, learning_rate=3e-4, grad_norm=0.4, transitions=256, epochs=4,
        applied_steps=4, failed_steps=0, stopped_at_kl=False, refused=None, duration_s=1.0,
    )  # fmt: skip


def test_every_figure_of_an_update_and_the_counts_are_gauges() -> None:
    gauges = Gauges()
    progress = LearnerProgress(updates=7, candidates_rejected=2, rejected_in_row=2)
    experience = {"joined": 100, "expired_no_report": 3}
    learner_gauges(gauges)(LearnerStats(progress, experience, 0.25, update(math.nan)))

    names = {name for name, _ in gauges.values}
    assert names >= set(UPDATE_GAUGES) - {METRIC_LEARNER_POLICY_LOSS}  # NaN is left out
    assert METRIC_LEARNER_POLICY_LOSS not in names
    assert gauges.values[(METRIC_LEARNER_UPDATES, ())] == 7
    assert gauges.values[(METRIC_LEARNER_CANDIDATES, (("outcome", "rejected"),))] == 2
    assert gauges.values[(METRIC_LEARNER_EXPERIENCE, (("state", "expired_no_report"),))] == 3


def test_nissa_alerts_when_the_gate_rejected_three_candidates_in_a_row() -> None:
    (rule,) = [r for r in DEFAULT_RULES if r.metric.endswith(METRIC_LEARNER_REJECTED_IN_ROW)]
    engine = AlertEngine(DEFAULT_RULES, lambda: 1_000.0, AlertSettings())
    fired: list[str] = []
    engine.listeners.append(lambda alert: fired.append(alert.name))

    def sample(value: float) -> pb.AggregatedSeries:
        return pb.AggregatedSeries(count=1, sum=value, min=value, max=value, last=value)

    engine.observe(rule.metric, (), sample(2.0))
    assert fired == []
    engine.observe(rule.metric, (), sample(3.0))
    assert fired == [rule.name]
