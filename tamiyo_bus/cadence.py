"""How often Tamiyo decides: her share of the trainer's time, as a budget.

A decision costs CPU time (graph build, policy forward, gate, signature) that the
trainer's step would otherwise have. Deciding every ``k`` steps costs ``cost / k`` per
step, so the smallest ``k`` with ``cost / (k * host_step) <= max_share`` keeps Tamiyo
within her share of the host's step time, whatever the machine, the policy's size or
the host's speed. Both costs are measured as the run goes (exponential moving
averages), so the cadence follows a host that slows down or a policy swapped for a
larger one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cadence_steps(
    decision_cost_ms: float, host_step_ms: float, max_share: float, *, max_steps: int
) -> int:
    """The smallest decision interval (in steps, 1..``max_steps``) at which decisions of
    ``decision_cost_ms`` take at most ``max_share`` of steps of ``host_step_ms``.

    Unknown (non-finite or non-positive) costs give 1: decide every step until measured.
    """
    if not (math.isfinite(decision_cost_ms) and math.isfinite(host_step_ms)):
        return 1
    if decision_cost_ms <= 0 or host_step_ms <= 0:
        return 1
    needed = math.ceil(decision_cost_ms / (max_share * host_step_ms) - 1e-9)
    return min(max(needed, 1), max_steps)


@dataclass(slots=True)
class Ewma:
    """Exponential moving average; nan until the first sample."""

    weight: float
    value: float = math.nan

    def add(self, sample: float) -> float:
        if math.isfinite(sample):
            self.value = (
                sample
                if math.isnan(self.value)
                else self.value + self.weight * (sample - self.value)
            )
        return self.value


@dataclass(slots=True)
class Cadence:
    """The decision interval of a run: ``fixed_steps`` when set (> 0), else chosen from
    the measured decision cost and host step time within ``max_share``."""

    max_share: float
    fixed_steps: int
    max_steps: int
    smoothing: float
    decision_cost: Ewma
    host_step: Ewma

    @classmethod
    def of(cls, max_share: float, fixed_steps: int, max_steps: int, smoothing: float) -> Cadence:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_step_share must be in (0, 1], got {max_share}")
        return cls(max_share, fixed_steps, max_steps, smoothing, Ewma(smoothing), Ewma(smoothing))

    def observe_decision(self, cost_ms: float) -> None:
        self.decision_cost.add(cost_ms)

    def observe_host_step(self, step_ms: float) -> None:
        self.host_step.add(step_ms)

    @property
    def steps(self) -> int:
        if self.fixed_steps > 0:
            return self.fixed_steps
        return cadence_steps(
            self.decision_cost.value, self.host_step.value, self.max_share, max_steps=self.max_steps
        )

    def share(self) -> float:
        """Tamiyo's measured share of the host's time at the current cadence (nan while
        either cost is unknown)."""
        cost, step = self.decision_cost.value, self.host_step.value
        if not (math.isfinite(cost) and math.isfinite(step)) or step <= 0:
            return math.nan
        return cost / (self.steps * step)
