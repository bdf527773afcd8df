"""Optional adaptive thresholds: every N epochs, re-centre each adaptable signal's base
on what this run has shown to be normal.

The new base is mean + k_sigma * std of the values observed since the last
recomputation, clamped to [min_factor, max_factor] x the configured base (0.5-2x), and
the emergency threshold moves by the same factor, so a run whose step latency or
gradient norm is simply larger than the defaults assume is not held in YELLOW forever,
while no amount of drift can move a threshold more than 2x from what was configured.
Physical limits (memory), counts, coverage and the policy's own risk never adapt.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from tamiyo_bus.risk.signals import Signal, Thresholds

ADAPTABLE: frozenset[Signal] = frozenset(
    {
        Signal.LOSS_DELTA,
        Signal.LOSS_VOLATILITY,
        Signal.GRADIENT_NORM,
        Signal.GRADIENT_VARIANCE,
        Signal.GRADIENT_CONFLICT,
        Signal.STEP_LATENCY,
        Signal.HOOK_LATENCY,
        Signal.KASMINA_APPLY_LATENCY,
        Signal.KASMINA_FINALIZE_LATENCY,
    }
)


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    every_epochs: int = 5
    k_sigma: float = 3.0
    min_samples: int = 100  # fewer observations of a signal leave its thresholds as they are
    min_factor: float = 0.5
    max_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.every_epochs < 1 or not 0.0 < self.min_factor <= 1.0 <= self.max_factor:
            raise ValueError("need every_epochs >= 1 and 0 < min_factor <= 1 <= max_factor")


def adapted_pair(
    base: float, emergency: float, mean: float, std: float, settings: AdaptiveSettings
) -> tuple[float, float]:
    """(base, emergency) moved to mean + k*std, by a factor clamped to the settings."""
    factor = (mean + settings.k_sigma * std) / base
    factor = min(max(factor, settings.min_factor), settings.max_factor)
    return base * factor, emergency * factor


@dataclass(slots=True)
class _Moments:
    """Welford's running count, mean and sum of squared deviations."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0


class AdaptiveThresholds:
    """Collects observed values and recomputes thresholds at epoch boundaries."""

    def __init__(self, configured: Thresholds, settings: AdaptiveSettings) -> None:
        self.configured = configured
        self.settings = settings
        self._signals = tuple(s for s in ADAPTABLE if configured.pair(s)[0] > 0.0)
        self._moments = {s: _Moments() for s in self._signals}
        self._last_epoch: int | None = None

    def observe(self, values: Mapping[Signal, float]) -> None:
        for signal in self._signals:
            x = values.get(signal)
            if x is not None and math.isfinite(x):
                self._moments[signal].add(x)

    def on_epoch(self, epoch: int) -> Thresholds | None:
        """New thresholds when ``every_epochs`` epochs have passed since the last
        recomputation (the first epoch seen starts the count), else None."""
        if self._last_epoch is None:
            self._last_epoch = epoch
            return None
        if epoch - self._last_epoch < self.settings.every_epochs:
            return None
        self._last_epoch = epoch
        changes: dict[str, float] = {}
        for signal, moments in self._moments.items():
            if moments.count >= self.settings.min_samples:
                base, emergency = self.configured.pair(signal)
                pair = adapted_pair(base, emergency, moments.mean, moments.std(), self.settings)
                changes.update(self.configured.with_pair(signal, *pair))
        self._moments = {s: _Moments() for s in self._signals}
        return dataclasses.replace(self.configured, **changes)
