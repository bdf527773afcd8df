"""Writes transitions into the storage and the sampler; expires what is too old.

A transition is rare (kept at a floor share of every batch) when the risk engine put
its step at ``rare_min_category`` or worse, or when it ended in a rollback. Expiry
removes live items by age in steps, by age in seconds, and by how many policy versions
behind the current one the behaviour policy was; each reason is counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tamiyo_bus.learning.replay.codec import EncodedStep, encode
from tamiyo_bus.learning.replay.sampler import PrioritizedSampler
from tamiyo_bus.learning.replay.storage import ReplayStorage
from tamiyo_bus.policy.actions import PolicyAction
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.risk import Category

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class GraphTransition:
    """One decision and what followed it, as the learner needs it."""

    graph: PolicyGraph | EncodedStep
    action: PolicyAction
    log_prob: float  # behaviour policy's
    value: float
    reward: float
    policy_version: int
    step: int  # the training step the decision was made at
    terminated: bool = False
    truncated: bool = False
    advantage: float = 0.0
    returns: float = 0.0
    risk_category: int = Category.GREEN
    rollback: bool = False


@dataclass(frozen=True, slots=True)
class ReplayWriterSettings:
    rare_min_category: int = Category.RED
    max_age_steps: int | None = 1_000_000  # None: no expiry by steps
    max_age_s: float | None = 86_400.0  # None: no expiry by wall-clock age
    max_policy_lag_versions: int | None = 16  # None: no expiry by policy version


@dataclass(frozen=True, slots=True)
class Expired:
    age_steps: int
    age_s: int
    policy_lag: int


class ReplayWriter:
    def __init__(
        self,
        storage: ReplayStorage,
        sampler: PrioritizedSampler,
        settings: ReplayWriterSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if sampler.capacity != storage.capacity:
            raise ValueError("sampler and storage must have the same capacity")
        self.storage = storage
        self.sampler = sampler
        self.settings = settings or ReplayWriterSettings()
        self.clock = clock
        self.counts: Counter[str] = Counter()

    def add(self, transitions: Sequence[GraphTransition]) -> IntArray:
        """Store ``transitions`` (each at the current max priority); their slots."""
        storage = self.storage
        topologies = []
        for t in transitions:
            tid, evicted = storage.topology_id(t.graph.structure)
            if len(evicted):
                self.sampler.remove(evicted)
                self.counts["evicted_topology"] += len(evicted)
            topologies.append(tid)
        if any(tid not in storage.topologies for tid in topologies):
            raise ValueError("one write holds more distinct structures than max_topologies")
        slots, overwritten = storage.allocate(len(transitions))
        self.counts["overwritten"] += len(overwritten)
        now_s = self.clock()
        rare = np.empty(len(transitions), dtype=np.bool_)
        for i, (slot, tid, t) in enumerate(zip(slots, topologies, transitions, strict=True)):
            a = t.action
            storage.write(
                int(slot),
                tid,
                (
                    t.graph.cells
                    if isinstance(t.graph, EncodedStep)
                    else encode(storage.topologies[tid], t.graph)
                ),
                {
                    "log_prob": t.log_prob,
                    "value": t.value,
                    "reward": t.reward,
                    "advantage": t.advantage,
                    "returns": t.returns,
                    "terminated": t.terminated,
                    "truncated": t.truncated,
                    "rollback": t.rollback,
                    "risk_category": int(t.risk_category),
                    "policy_version": t.policy_version,
                    "step": t.step,
                    "time_s": now_s,
                    "choice": (a.action, a.seed, a.blueprint, a.blend),
                    "continuous": (a.alpha_log_steps, a.lr_log_scale),
                },
            )
            rare[i] = t.rollback or int(t.risk_category) >= self.settings.rare_min_category
        self.sampler.add(slots, rare)
        self.counts["inserted"] += len(transitions)
        return slots

    def expire(self, *, now_step: int, policy_version: int) -> Expired:
        """Remove live items past any age or version-lag limit."""
        s, c = self.settings, self.storage.columns
        live = self.storage.valid
        by_steps = np.zeros_like(live)
        by_seconds = np.zeros_like(live)
        by_lag = np.zeros_like(live)
        if s.max_age_steps is not None:
            by_steps = live & (now_step - c["step"] > s.max_age_steps)
        if s.max_age_s is not None:
            by_seconds = live & ~by_steps & (self.clock() - c["time_s"] > s.max_age_s)
        if s.max_policy_lag_versions is not None:
            lag = policy_version - c["policy_version"]
            by_lag = live & ~by_steps & ~by_seconds & (lag > s.max_policy_lag_versions)
        expired = np.flatnonzero(by_steps | by_seconds | by_lag)
        self.storage.invalidate(expired)
        self.sampler.remove(expired)
        result = Expired(int(by_steps.sum()), int(by_seconds.sum()), int(by_lag.sum()))
        self.counts["expired_age_steps"] += result.age_steps
        self.counts["expired_age_s"] += result.age_s
        self.counts["expired_policy_lag"] += result.policy_lag
        return result

    def state_dict(self) -> dict[str, Any]:
        return {f"count/{k}": v for k, v in self.counts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = Counter(
            {k.split("/", 1)[1]: int(v) for k, v in state.items() if k.startswith("count/")}
        )
