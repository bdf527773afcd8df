"""The prioritised graph replay: storage, sampler and writer behind one object."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.replay.persistence import load_state, save_state
from tamiyo_bus.learning.replay.sampler import PrioritizedSampler, ReplaySamplerSettings
from tamiyo_bus.learning.replay.storage import ReplayStorage, ReplayStorageSettings
from tamiyo_bus.learning.replay.writer import (
    Expired,
    GraphTransition,
    ReplayWriter,
    ReplayWriterSettings,
)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    storage: ReplayStorageSettings = field(default_factory=ReplayStorageSettings)
    sampler: ReplaySamplerSettings = field(default_factory=ReplaySamplerSettings)
    writer: ReplayWriterSettings = field(default_factory=ReplayWriterSettings)


@dataclass(frozen=True, slots=True)
class ReplaySample:
    """A prioritised batch; every per-transition tensor is in ``transitions`` order."""

    transitions: GraphTransitions
    slots: IntArray
    serials: IntArray  # tell a slot reused since this sample from the item drawn
    weights: Tensor  # [n] importance weights, at most 1
    beta: float
    rare_drawn: int
    columns: dict[str, Tensor]  # reward, value, log_prob, advantage, returns, flags ...


class GraphReplay:
    def __init__(
        self,
        settings: ReplaySettings | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = s = settings or ReplaySettings()
        self.storage = ReplayStorage(s.storage)
        self.sampler = PrioritizedSampler(s.storage.capacity_transitions, s.sampler)
        self.writer = ReplayWriter(self.storage, self.sampler, s.writer, clock=clock)
        self.rng = np.random.default_rng(seed)
        self.stale_priority_updates = 0

    def __len__(self) -> int:
        return len(self.storage)

    def add(self, transitions: Sequence[GraphTransition]) -> IntArray:
        return self.writer.add(transitions)

    def sample(self, n: int) -> ReplaySample:
        drawn = self.sampler.sample(n, self.rng)
        stored = self.storage.gather(drawn.indices)
        columns = {
            name: torch.from_numpy(np.ascontiguousarray(values))
            for name, values in stored.columns.items()
            if name not in ("topology", "serial", "choice", "continuous")
        }
        return ReplaySample(
            GraphTransitions.from_groups(stored.groups),
            stored.slots,
            stored.columns["serial"],
            torch.from_numpy(drawn.weights[stored.order]),
            drawn.beta,
            drawn.rare_drawn,
            columns,
        )

    def update_priorities(self, sample: ReplaySample, td_errors: Tensor | np.ndarray) -> int:
        """New priorities from |TD error| (in the sample's order) for the sampled items
        still stored; the number of stale ones (slot reused or expired) is returned."""
        errors = np.asarray(torch.as_tensor(td_errors).detach().cpu(), dtype=np.float64)
        c = self.storage
        current = c.valid[sample.slots] & (c.columns["serial"][sample.slots] == sample.serials)
        self.sampler.update(sample.slots[current], errors[current])
        stale = int((~current).sum())
        self.stale_priority_updates += stale
        return stale

    def expire(self, *, now_step: int, policy_version: int) -> Expired:
        return self.writer.expire(now_step=now_step, policy_version=policy_version)

    def bytes_per_transition(self) -> float:
        """Slot row plus its share of the two sum-trees (topologies not included)."""
        trees = self.sampler.all.nodes.nbytes + self.sampler.rare.nodes.nbytes
        flags = self.sampler.is_rare.nbytes + self.sampler.live.nbytes
        return self.storage.row_bytes() + (trees + flags) / self.storage.capacity

    def save(self, path: Path) -> int:
        return save_state(path, self._parts())

    def load(self, path: Path) -> None:
        load_state(path, self._parts())

    def _parts(self) -> dict[str, ReplayStorage | PrioritizedSampler | ReplayWriter]:
        return {"storage": self.storage, "sampler": self.sampler, "writer": self.writer}
