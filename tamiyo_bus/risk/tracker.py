"""Turns what a step knows (its SystemStatePacket, blueprint metadata, feature coverage,
whether inference missed its deadline) into raw signal values for the gate.

The only stateful part of signal extraction: the loss's moving average and recent
window (for loss delta and volatility) and the recent deadline misses (for timeouts).
Everything else is read straight from the packet's ``training_metrics`` under the names
the trainer and the policy's features already use.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk.signals import Signal

# training_metrics key -> signal, read as is.
METRIC_SIGNALS: tuple[tuple[str, Signal], ...] = (
    ("gradient_norm", Signal.GRADIENT_NORM),
    ("gradient_variance", Signal.GRADIENT_VARIANCE),
    ("gradient_conflict_rate", Signal.GRADIENT_CONFLICT),
    ("step_latency_ms", Signal.STEP_LATENCY),
    ("hook_latency_ms", Signal.HOOK_LATENCY),
    ("device_memory_fraction", Signal.DEVICE_MEMORY),
    ("host_memory_fraction", Signal.HOST_MEMORY),
    ("kasmina_apply_latency_ms", Signal.KASMINA_APPLY_LATENCY),
    ("kasmina_finalize_latency_ms", Signal.KASMINA_FINALIZE_LATENCY),
)
ISOLATION_METRIC = "isolation_violations"  # run level if reported, else summed over seeds
# Seeds whose blueprint no longer contributes to the model.
_GONE = frozenset(
    {
        pb.SEED_STAGE_DORMANT,
        pb.SEED_STAGE_CULLED,
        pb.SEED_STAGE_EMBARGOED,
        pb.SEED_STAGE_TERMINATED,
    }
)


class BlueprintInfo(Protocol):
    """What the tracker reads of Urza's metadata (``urza_client.BlueprintMetadata``)."""

    @property
    def risk(self) -> float: ...

    @property
    def quarantined(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    loss_ewma_alpha: float = 0.1  # weight of the newest loss in its moving average
    loss_window_steps: int = 20  # losses in the volatility window
    timeout_window_decisions: int = 50  # decisions over which deadline misses are counted


class SignalTracker:
    """One per training run; ``observe`` is called once per decision on the step path."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()) -> None:
        self.settings = settings
        self._loss_ewma: float | None = None
        self._losses: deque[float] = deque(maxlen=settings.loss_window_steps)
        self._timeouts: deque[bool] = deque(maxlen=settings.timeout_window_decisions)
        self._timeout_count = 0

    def observe(
        self,
        packet: pb.SystemStatePacket,
        *,
        blueprints: Mapping[str, BlueprintInfo],
        proposed_blueprint_id: str = "",
        feature_coverage: float | None = None,
        timed_out: bool = False,
    ) -> dict[Signal, float]:
        """Raw signal values for this step (signals without an observation are left out)."""
        metrics = packet.training_metrics
        values: dict[Signal, float] = {
            signal: metrics[key] for key, signal in METRIC_SIGNALS if key in metrics
        }
        values[Signal.LOSS_DELTA] = self._loss_delta(packet.training_loss)
        values[Signal.LOSS_VOLATILITY] = loss_volatility(self._losses)
        run_violations = metrics.get(ISOLATION_METRIC)
        exposure = seed_exposure(
            packet.seed_states,
            blueprints,
            proposed_blueprint_id,
            count_violations=run_violations is None,
        )
        values[Signal.ISOLATION_VIOLATIONS] = (
            exposure.violations if run_violations is None else run_violations
        )
        values[Signal.BLUEPRINT_RISK] = exposure.risk
        values[Signal.BLUEPRINT_QUARANTINE] = float(exposure.quarantined)
        if feature_coverage is not None:
            values[Signal.FEATURE_COVERAGE] = feature_coverage
        values[Signal.TIMEOUTS] = float(self._count_timeout(timed_out))
        return values

    def _loss_delta(self, loss: float) -> float:
        if not math.isfinite(loss):
            return math.inf  # a diverged loss is the worst loss delta there is
        ewma = self._loss_ewma
        self._losses.append(loss)
        alpha = self.settings.loss_ewma_alpha
        self._loss_ewma = loss if ewma is None else ewma + alpha * (loss - ewma)
        return 0.0 if ewma is None else relative_rise(loss, ewma)

    def _count_timeout(self, timed_out: bool) -> int:
        window = self._timeouts
        if len(window) == window.maxlen and window[0]:
            self._timeout_count -= 1
        window.append(timed_out)
        self._timeout_count += timed_out
        return self._timeout_count


def relative_rise(value: float, reference: float) -> float:
    """(value - reference) / |reference|; a rise from a zero reference reads as +inf."""
    if reference == 0.0:
        return math.inf if value > 0.0 else 0.0
    return (value - reference) / abs(reference)


def loss_volatility(losses: deque[float]) -> float:
    """Coefficient of variation (std / |mean|) of the recent losses; 0 with fewer than two."""
    n = len(losses)
    if n < 2:
        return 0.0
    mean = sum(losses) / n
    if mean == 0.0:
        return 0.0
    variance = sum([(x - mean) ** 2 for x in losses]) / (n - 1)
    return math.sqrt(variance) / abs(mean)


@dataclass(frozen=True, slots=True)
class SeedExposure:
    risk: float  # highest risk among the blueprints in (or proposed for) the model
    quarantined: int  # of those blueprints, how many Urza has quarantined
    violations: float  # isolation violations summed over the seeds


def seed_exposure(
    seeds: Iterable[pb.SeedState],
    blueprints: Mapping[str, BlueprintInfo],
    proposed_blueprint_id: str,
    *,
    count_violations: bool = True,
) -> SeedExposure:
    """One pass over the seeds: isolation violations summed over them (when asked: the
    trainer may report the run's count itself), and the blueprint risk and quarantine of
    the seeds still in the model plus the proposed germination's blueprint. Blueprints
    Urza did not answer for are skipped."""
    ids = [proposed_blueprint_id] if proposed_blueprint_id else []
    violations = 0.0
    for seed in seeds:
        if count_violations:
            violations += seed.metrics.get(ISOLATION_METRIC, 0.0)
        blueprint_id = seed.blueprint_id
        if blueprint_id and seed.stage not in _GONE:
            ids.append(blueprint_id)
    risk = 0.0
    quarantined = 0
    for blueprint_id in ids:
        meta = blueprints.get(blueprint_id)
        if meta is not None:
            risk = max(risk, meta.risk)
            quarantined += meta.quarantined
    return SeedExposure(risk, quarantined, violations)
