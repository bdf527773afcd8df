"""What one real training run earned, and whether later runs earned more (pure: no IO).

A run's return is the reward Simic's learner learns from, summed over the run's
decision points: each interval from one decision's packet to the next (the last to
the run's end) by :func:`interval_terms`, plus the risk events its field reports
observed. The same figure for every arm (learned, no-op, heuristic), so the arms
compare on one scale; the field-report reward (what the reports alone observed of the
commands that acted) is kept beside it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.reward import (
    Progress,
    RewardSettings,
    RewardTerms,
    interval_terms,
    reward,
)

BOOTSTRAP_RESAMPLES = 10_000
INTERVAL_LEVEL = 0.95


def run_return(
    decision_packets: Sequence[pb.SystemStatePacket],
    final_packet: pb.SystemStatePacket,
    reports: Sequence[pb.FieldReport],
    settings: RewardSettings,
) -> float:
    """The learner's reward summed over a run (module docstring)."""
    points = [Progress.of_packet(p) for p in (*decision_packets, final_packet)]
    total = sum(
        reward(interval_terms(before, after), settings)
        for before, after in itertools.pairwise(points)
    )
    for report in reports:
        observed = RewardTerms.of_report(report)
        events = RewardTerms(
            rollbacks=observed.rollbacks,
            emergencies=observed.emergencies,
            isolation_violations=observed.isolation_violations,
        )
        total += reward(events, settings)
    return float(total)


def report_reward(reports: Sequence[pb.FieldReport], settings: RewardSettings) -> float:
    """The reward of every field report of a run, summed."""
    return float(sum(reward(RewardTerms.of_report(r), settings) for r in reports))


@dataclass(frozen=True)
class QuarterChange:
    """Mean of the last quarter of runs minus the first quarter's, with a bootstrap
    interval (``low``, ``high``) at ``INTERVAL_LEVEL``; nan when there are too few."""

    first_mean: float
    last_mean: float
    change: float
    low: float
    high: float
    runs_per_quarter: int

    @property
    def higher(self) -> bool:
        """The whole interval lies above zero."""
        return self.low > 0.0


def quarter_change(values: Sequence[float], seed: int = 0) -> QuarterChange:
    """Compare the first and last quarters of ``values`` (in run order)."""
    quarter = len(values) // 4
    if quarter < 1:
        nan = math.nan
        return QuarterChange(nan, nan, nan, nan, nan, 0)
    first = np.asarray(values[:quarter], dtype=np.float64)
    last = np.asarray(values[-quarter:], dtype=np.float64)
    rng = np.random.default_rng(seed)
    resampled = rng.choice(last, (BOOTSTRAP_RESAMPLES, quarter)).mean(axis=1) - rng.choice(
        first, (BOOTSTRAP_RESAMPLES, quarter)
    ).mean(axis=1)
    tail = (1.0 - INTERVAL_LEVEL) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return QuarterChange(
        first_mean=float(first.mean()),
        last_mean=float(last.mean()),
        change=float(last.mean() - first.mean()),
        low=float(low),
        high=float(high),
        runs_per_quarter=quarter,
    )
