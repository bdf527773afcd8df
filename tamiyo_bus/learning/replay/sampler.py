"""Prioritised, stratified sampling of replay slots.

P(i) = p_i^alpha / sum_k p_k^alpha with p_i = |delta_i| + eps; a new item enters at the
largest priority seen so far, so it is replayed at least once soon. A batch of n is
drawn by stratified segments (one draw in each of n equal slices of the total mass),
which lowers the variance of the batch composition against n independent draws.

Rare risk events (RED or worse, rollbacks) keep a floor share of every batch while any
is stored: that share is drawn from a second tree that holds only them, the rest from
the tree of all items. The importance weights correct for the mixture actually used:
w_i = (N P(i))^-beta, capped, then divided by the batch's largest weight, with beta
annealed linearly from ``beta_start`` to ``beta_end``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tamiyo_bus.learning.replay.sumtree import SumTree

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class ReplaySamplerSettings:
    priority_alpha: float = 0.6  # 0: uniform, 1: fully proportional to priority
    priority_eps: float = 1e-6  # added to |delta| so no stored item becomes unreachable
    beta_start: float = 0.4  # importance-weight exponent at the first batch
    beta_end: float = 1.0
    beta_anneal_batches: int = 100_000  # batches over which beta reaches beta_end
    importance_weight_cap: float = 10.0  # cap on (N P(i))^-beta before normalising
    rare_floor_fraction: float = 0.1  # share of each batch kept for rare risk events

    def __post_init__(self) -> None:
        if not 0.0 <= self.rare_floor_fraction <= 1.0:
            raise ValueError("rare_floor_fraction must lie in [0, 1]")
        if self.priority_eps <= 0 or self.importance_weight_cap <= 0:
            raise ValueError("priority_eps and importance_weight_cap must be > 0")


def beta_at(batches: int, settings: ReplaySamplerSettings) -> float:
    """Linear annealing from beta_start to beta_end over beta_anneal_batches."""
    span = max(settings.beta_anneal_batches, 1)
    progress = min(max(batches / span, 0.0), 1.0)
    return settings.beta_start + (settings.beta_end - settings.beta_start) * progress


def importance_weights(
    probabilities: FloatArray, population: int, beta: float, cap: float
) -> npt.NDArray[np.float32]:
    """(N P(i))^-beta, capped at ``cap``, divided by the batch maximum (so <= 1)."""
    raw = np.minimum((population * probabilities) ** -beta, cap)
    normalised: npt.NDArray[np.float32] = (raw / raw.max()).astype(np.float32)
    return normalised


@dataclass(frozen=True, slots=True)
class PrioritySample:
    indices: IntArray  # slots, rare draws first
    probabilities: FloatArray  # P(i) under the mixture that drew the batch
    weights: npt.NDArray[np.float32]
    beta: float
    rare_drawn: int


class PrioritizedSampler:
    """Priorities of ``capacity`` slots; a slot with priority 0 is never drawn."""

    def __init__(self, capacity: int, settings: ReplaySamplerSettings | None = None) -> None:
        self.capacity = capacity
        self.settings = settings or ReplaySamplerSettings()
        self.all = SumTree(capacity)
        self.rare = SumTree(capacity)
        self.is_rare = np.zeros(capacity, dtype=np.bool_)
        self.live = np.zeros(capacity, dtype=np.bool_)
        self.max_priority = 1.0
        self.batches = 0

    @property
    def population(self) -> int:
        return int(self.live.sum())

    def _set(self, indices: IntArray, priorities: FloatArray) -> None:
        weights = priorities**self.settings.priority_alpha
        self.all.set(indices, weights)
        self.rare.set(indices, np.where(self.is_rare[indices], weights, 0.0))

    def add(self, indices: IntArray, rare: BoolArray) -> None:
        """New items (or slots overwritten by new items) at the current max priority."""
        self.is_rare[indices] = rare
        self.live[indices] = True
        self._set(indices, np.full(len(indices), self.max_priority))

    def remove(self, indices: IntArray) -> None:
        self.live[indices] = False
        self.is_rare[indices] = False
        self.all.set(indices, np.zeros(len(indices)))
        self.rare.set(indices, np.zeros(len(indices)))

    def update(self, indices: IntArray, td_errors: FloatArray) -> None:
        """Priorities |delta| + eps for live ``indices`` (others are ignored)."""
        live = self.live[indices]
        priorities = (
            np.abs(np.asarray(td_errors, dtype=np.float64)[live]) + self.settings.priority_eps
        )
        if len(priorities):
            self.max_priority = max(self.max_priority, float(priorities.max()))
            indices = indices[live]
            weights = priorities**self.settings.priority_alpha
            self.all.set(indices, weights)
            rare = self.is_rare[indices]  # the others' rare leaves are 0 already
            self.rare.set(indices[rare], weights[rare])

    def _stratified(self, tree: SumTree, n: int, rng: np.random.Generator) -> IntArray:
        segment = tree.total / n
        return tree.find((np.arange(n) + rng.random(n)) * segment)

    def sample(self, n: int, rng: np.random.Generator) -> PrioritySample:
        population = self.population
        if population == 0 or n < 1:
            raise ValueError("nothing to sample")
        s = self.settings
        rare_total = self.rare.total
        rare_n = min(n, math.ceil(s.rare_floor_fraction * n)) if rare_total > 0 else 0
        indices = np.concatenate(
            (
                self._stratified(self.rare, rare_n, rng) if rare_n else np.empty(0, np.int64),
                self._stratified(self.all, n - rare_n, rng)
                if n > rare_n
                else np.empty(0, np.int64),
            )
        )
        share = rare_n / n
        probabilities = (1.0 - share) * self.all.leaves(indices) / self.all.total
        if rare_n:
            probabilities = probabilities + share * self.rare.leaves(indices) / rare_total
        beta = beta_at(self.batches, s)
        self.batches += 1
        weights = importance_weights(probabilities, population, beta, s.importance_weight_cap)
        return PrioritySample(indices, probabilities, weights, beta, rare_n)

    def state_dict(self) -> dict[str, Any]:
        return {
            "leaves": self.all.nodes[self.all.leaf_start : self.all.leaf_start + self.capacity],
            "is_rare": self.is_rare,
            "live": self.live,
            "max_priority": self.max_priority,
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        leaves = np.asarray(state["leaves"], dtype=np.float64)
        self.is_rare[:] = state["is_rare"]
        self.live[:] = state["live"]
        self.max_priority = float(state["max_priority"])
        self.batches = int(state["batches"])
        for tree, values in ((self.all, leaves), (self.rare, np.where(self.is_rare, leaves, 0.0))):
            tree.nodes[:] = 0.0
            tree.nodes[tree.leaf_start : tree.leaf_start + self.capacity] = values
            tree.rebuild()
