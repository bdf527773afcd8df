"""Risk signals and their thresholds: each raw value scores 0..1 between a base and an
emergency threshold.

Pure: nothing here keeps state or does IO. A score of 0 means "at or below base"
(normal), 1 means "at or past the emergency threshold", linear in between. A signal
where *lower* is worse (feature coverage) simply has its emergency threshold below its
base; the same formula then scores it the right way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Signal(StrEnum):
    """The risk dimensions. The value doubles as the reason code of a decision it decides."""

    LOSS_DELTA = "loss_delta"
    LOSS_VOLATILITY = "loss_volatility"
    GRADIENT_NORM = "gradient_norm"
    GRADIENT_VARIANCE = "gradient_variance"
    GRADIENT_CONFLICT = "gradient_conflict"
    STEP_LATENCY = "step_latency"
    HOOK_LATENCY = "hook_latency"
    DEVICE_MEMORY = "device_memory"
    HOST_MEMORY = "host_memory"
    KASMINA_APPLY_LATENCY = "kasmina_apply_latency"
    KASMINA_FINALIZE_LATENCY = "kasmina_finalize_latency"
    ISOLATION_VIOLATIONS = "isolation_violations"
    BLUEPRINT_RISK = "blueprint_risk"
    BLUEPRINT_QUARANTINE = "blueprint_quarantine"
    POLICY_RISK = "policy_risk"
    FEATURE_COVERAGE = "feature_coverage"
    TIMEOUTS = "timeouts"


SIGNALS: tuple[Signal, ...] = tuple(Signal)
INDEX: dict[Signal, int] = {signal: i for i, signal in enumerate(SIGNALS)}
# The signals only the decision completes (the proposed blueprint, the policy's risk
# head, its inputs' coverage, whether it missed its deadline); the others are known
# from the step's packet before the policy has decided.
DECISION_SIGNALS: frozenset[Signal] = frozenset(
    {
        Signal.BLUEPRINT_RISK,
        Signal.BLUEPRINT_QUARANTINE,
        Signal.POLICY_RISK,
        Signal.FEATURE_COVERAGE,
        Signal.TIMEOUTS,
    }
)

# The settings field prefix of each signal: the signal's name plus its unit.
_PREFIX: dict[Signal, str] = {
    Signal.LOSS_DELTA: "loss_delta_ratio",
    Signal.LOSS_VOLATILITY: "loss_volatility_cv",
    Signal.GRADIENT_NORM: "gradient_norm_l2",
    Signal.GRADIENT_VARIANCE: "gradient_variance_sq",
    Signal.GRADIENT_CONFLICT: "gradient_conflict_fraction",
    Signal.STEP_LATENCY: "step_latency_ms",
    Signal.HOOK_LATENCY: "hook_latency_ms",
    Signal.DEVICE_MEMORY: "device_memory_fraction",
    Signal.HOST_MEMORY: "host_memory_fraction",
    Signal.KASMINA_APPLY_LATENCY: "kasmina_apply_latency_ms",
    Signal.KASMINA_FINALIZE_LATENCY: "kasmina_finalize_latency_ms",
    Signal.ISOLATION_VIOLATIONS: "isolation_violations_count",
    Signal.BLUEPRINT_RISK: "blueprint_risk_score",
    Signal.BLUEPRINT_QUARANTINE: "blueprint_quarantine_count",
    Signal.POLICY_RISK: "policy_risk_severity",
    Signal.FEATURE_COVERAGE: "feature_coverage_fraction",
    Signal.TIMEOUTS: "timeouts_count",
}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Base (risk starts) and emergency (risk is total) threshold of every signal.

    Units are in the names: ``ratio`` is a relative change (0.1 = +10 %), ``cv`` a
    coefficient of variation, ``l2`` an L2 norm, ``sq`` a variance of gradient entries,
    ``fraction`` a share in 0..1, ``ms`` milliseconds, ``count`` events (per step for
    isolation violations and quarantined seeds, per window for timeouts), ``score`` and
    ``severity`` a 0..1 value.
    """

    loss_delta_ratio_base: float = 0.05  # loss 5 % above its moving average
    loss_delta_ratio_emergency: float = 0.5
    loss_volatility_cv_base: float = 0.1
    loss_volatility_cv_emergency: float = 0.5
    gradient_norm_l2_base: float = 10.0
    gradient_norm_l2_emergency: float = 100.0
    gradient_variance_sq_base: float = 1.0
    gradient_variance_sq_emergency: float = 10.0
    gradient_conflict_fraction_base: float = 0.3
    gradient_conflict_fraction_emergency: float = 0.7
    step_latency_ms_base: float = 1_000.0
    step_latency_ms_emergency: float = 10_000.0
    hook_latency_ms_base: float = 2.0  # the hook budget
    hook_latency_ms_emergency: float = 20.0
    device_memory_fraction_base: float = 0.85
    device_memory_fraction_emergency: float = 0.98
    host_memory_fraction_base: float = 0.85
    host_memory_fraction_emergency: float = 0.98
    kasmina_apply_latency_ms_base: float = 2.0  # the apply budget
    kasmina_apply_latency_ms_emergency: float = 20.0
    kasmina_finalize_latency_ms_base: float = 5.0
    kasmina_finalize_latency_ms_emergency: float = 50.0
    isolation_violations_count_base: float = 0.0
    isolation_violations_count_emergency: float = 2.0
    blueprint_risk_score_base: float = 0.5
    blueprint_risk_score_emergency: float = 0.9
    blueprint_quarantine_count_base: float = 0.0
    blueprint_quarantine_count_emergency: float = 1.0
    policy_risk_severity_base: float = 0.25
    policy_risk_severity_emergency: float = 0.75
    feature_coverage_fraction_base: float = 0.9  # lower is worse
    feature_coverage_fraction_emergency: float = 0.5
    timeouts_count_base: float = 0.0
    timeouts_count_emergency: float = 2.0

    def __post_init__(self) -> None:
        for signal in SIGNALS:
            base, emergency = self.pair(signal)
            if not (math.isfinite(base) and math.isfinite(emergency)) or base == emergency:
                raise ValueError(f"{signal}: base and emergency must be finite and differ")

    def pair(self, signal: Signal) -> tuple[float, float]:
        """(base, emergency) of one signal."""
        prefix = _PREFIX[signal]
        base: float = getattr(self, f"{prefix}_base")
        emergency: float = getattr(self, f"{prefix}_emergency")
        return base, emergency

    def with_pair(self, signal: Signal, base: float, emergency: float) -> dict[str, float]:
        """The field values that set one signal's pair (for ``dataclasses.replace``)."""
        prefix = _PREFIX[signal]
        return {f"{prefix}_base": base, f"{prefix}_emergency": emergency}


@dataclass(frozen=True, slots=True)
class ScoreTable:
    """Thresholds compiled for the step path: per signal index, base and 1/(emergency-base)."""

    bases: tuple[float, ...]
    inverse_spans: tuple[float, ...]

    @classmethod
    def from_thresholds(cls, thresholds: Thresholds) -> ScoreTable:
        pairs = [thresholds.pair(signal) for signal in SIGNALS]
        return cls(
            tuple(base for base, _ in pairs),
            tuple(1.0 / (emergency - base) for base, emergency in pairs),
        )

    def score(self, index: int, value: float) -> float:
        """Score of the signal at ``index`` in SIGNALS (see ``score``)."""
        return _clip01((value - self.bases[index]) * self.inverse_spans[index])


def score(value: float, base: float, emergency: float) -> float:
    """0 at or below base, 1 at or past emergency, linear between; NaN reads as unobserved (0).

    +inf (a diverged loss) scores 1: the tracker maps non-finite observations to +inf
    where they mean danger.
    """
    return _clip01((value - base) / (emergency - base))


def _clip01(t: float) -> float:
    if t >= 1.0:
        return 1.0
    if t > 0.0:
        return t
    return 0.0  # also NaN: every comparison with NaN is false


def score_all(values: Mapping[Signal, float], table: ScoreTable) -> list[float]:
    """Scores of every signal in SIGNALS order; a signal absent from ``values`` scores 0."""
    scores = [0.0] * len(SIGNALS)
    score_into(scores, values, table)
    return scores


def score_into(
    scores: list[float], values: Mapping[Signal, float], table: ScoreTable
) -> dict[int, float]:
    """Write the scores of ``values`` into ``scores`` (SIGNALS order); returns them by
    SIGNALS index."""
    scored: dict[int, float] = {}
    bases, inverse_spans = table.bases, table.inverse_spans
    for signal, value in values.items():
        i = INDEX[signal]
        t = (value - bases[i]) * inverse_spans[i]
        scores[i] = scored[i] = 1.0 if t >= 1.0 else t if t > 0.0 else 0.0  # _clip01, inlined
    return scored
