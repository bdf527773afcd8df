"""Preallocated slots of graph transitions, and the topologies they share.

Every per-transition field is a column of a numpy array with one row per slot,
allocated once (at the first write, when the row widths are known from the first
topology plus headroom), so memory is bounded by ``capacity_transitions`` x the row
size, whatever is written. Slots are reused in ring order; a topology is stored once
and counted by the live slots that use it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tamiyo_bus.learning.graph_batch import GraphGroup
from tamiyo_bus.learning.hierarchical import ActionBatch
from tamiyo_bus.learning.replay.codec import (
    FEATURE_DTYPE,
    EncodedGraph,
    Topology,
    TransitionLayout,
    decode,
    structure_arrays,
    structure_from_arrays,
)
from tamiyo_bus.policy.structure import GraphStructure

IntArray = npt.NDArray[np.int64]

# Scalar columns: name -> dtype (one value per slot).
SCALARS: dict[str, npt.DTypeLike] = {
    "topology": np.int32,
    "serial": np.int64,  # insertion number: tells a reused slot from the item sampled
    "log_prob": np.float32,
    "value": np.float32,
    "reward": np.float32,
    "advantage": np.float32,
    "returns": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "rollback": np.bool_,
    "risk_category": np.uint8,
    "policy_version": np.int64,
    "step": np.int64,
    "time_s": np.float64,
    "choice": np.int16,  # [4]: action, seed, blueprint, blend (-1: unused)
    "continuous": np.float32,  # [2]: alpha log steps, lr log scale
}
_VECTOR_WIDTHS = {"choice": 4, "continuous": 2}
# Structure objects remembered per topology, so a known object skips the digest.
_OBJECTS_PER_TOPOLOGY = 4


def _column(name: str, capacity: int) -> np.ndarray:
    width = _VECTOR_WIDTHS.get(name)
    return np.zeros((capacity,) if width is None else (capacity, width), dtype=SCALARS[name])


@dataclass(frozen=True, slots=True)
class ReplayStorageSettings:
    capacity_transitions: int = 100_000
    max_topologies: int = 256  # distinct seed placements held at once
    layout_headroom_fraction: float = 0.25  # row widths beyond the first topology's

    def __post_init__(self) -> None:
        if self.capacity_transitions < 1 or self.max_topologies < 1:
            raise ValueError("capacity_transitions and max_topologies must be >= 1")


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """Slots decoded as graph groups; every column follows ``slots`` (grouped by
    topology, the order of the groups' transitions); ``order`` maps each position to
    its position in the slots asked for."""

    slots: IntArray
    order: IntArray
    groups: tuple[GraphGroup, ...]
    columns: dict[str, np.ndarray]


class ReplayStorage:
    def __init__(self, settings: ReplayStorageSettings | None = None) -> None:
        self.settings = s = settings or ReplayStorageSettings()
        self.capacity = s.capacity_transitions
        self.layout: TransitionLayout | None = None
        self.graph_columns: dict[str, np.ndarray] = {}
        self.columns = {name: _column(name, self.capacity) for name in SCALARS}
        self.columns["topology"][:] = -1
        self.valid = np.zeros(self.capacity, dtype=np.bool_)
        self.cursor = 0
        self.serials = 0
        self.topologies: dict[int, Topology] = {}
        self._by_digest: dict[str, int] = {}
        # id(structure) -> (structure, topology id); holding the object keeps its id unique.
        self._by_object: OrderedDict[int, tuple[GraphStructure, int]] = OrderedDict()
        self._next_topology = 0

    def __len__(self) -> int:
        return int(self.valid.sum())

    # -- topologies ---------------------------------------------------------------

    def live_per_topology(self) -> dict[int, int]:
        ids, counts = np.unique(self.columns["topology"][self.valid], return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}

    def topology_id(self, structure: GraphStructure) -> tuple[int, IntArray]:
        """The id of ``structure``'s topology, registering it if new, and the slots
        invalidated to make room for it (the least-used topology's, when the table is
        full and no topology is unused)."""
        known = self._by_object.get(id(structure))
        if known is not None:
            self._by_object.move_to_end(id(structure))
            return known[1], np.empty(0, np.int64)
        topology = Topology(structure)
        found = self._by_digest.get(topology.digest)
        if found is not None:
            self._remember(structure, found)
            return found, np.empty(0, np.int64)
        self._ensure_layout(topology)
        evicted = self._make_room()
        tid = self._next_topology
        self._next_topology += 1
        self._add_topology(tid, topology)
        return tid, evicted

    def _add_topology(self, tid: int, topology: Topology) -> None:
        self.topologies[tid] = topology
        self._by_digest[topology.digest] = tid
        self._remember(topology.structure, tid)

    def _remember(self, structure: GraphStructure, tid: int) -> None:
        self._by_object[id(structure)] = (structure, tid)
        while len(self._by_object) > _OBJECTS_PER_TOPOLOGY * self.settings.max_topologies:
            self._by_object.popitem(last=False)

    def _make_room(self) -> IntArray:
        if len(self.topologies) < self.settings.max_topologies:
            return np.empty(0, np.int64)
        live = self.live_per_topology()
        unused = [t for t in self.topologies if t not in live]
        for tid in unused:
            self._drop_topology(tid)
        if unused:
            return np.empty(0, np.int64)
        victim = min(live, key=lambda t: (live[t], t))
        slots = np.flatnonzero(self.valid & (self.columns["topology"] == victim))
        self.invalidate(slots)
        self._drop_topology(victim)
        return slots

    def _drop_topology(self, tid: int) -> None:
        topology = self.topologies.pop(tid)
        self._by_digest.pop(topology.digest, None)
        for key in [k for k, (_, t) in self._by_object.items() if t == tid]:
            del self._by_object[key]

    def _ensure_layout(self, topology: Topology) -> None:
        if self.layout is None:
            self.layout = layout = TransitionLayout.fitting(
                topology, self.settings.layout_headroom_fraction
            )
            c = self.capacity
            self.graph_columns = {
                "features": np.zeros((c, layout.feature_cells), FEATURE_DTYPE),
                "node_scalar": np.zeros((c, layout.node_cells), FEATURE_DTYPE),
                "compat": np.zeros((c, layout.compat_cells), FEATURE_DTYPE),
                "mask_bits": np.zeros((c, (layout.mask_bits + 7) // 8), np.uint8),
            }
        elif not self.layout.admits(topology):
            raise ValueError(
                f"a graph of {topology.structure.counts} nodes per type does not fit the "
                f"replay's rows {self.layout}; raise layout_headroom_fraction"
            )

    # -- slots --------------------------------------------------------------------

    def allocate(self, n: int) -> tuple[IntArray, IntArray]:
        """The next ``n`` slots in ring order, and those of them that held live items."""
        if n > self.capacity:
            raise ValueError(f"cannot write {n} transitions into {self.capacity} slots")
        slots = (self.cursor + np.arange(n, dtype=np.int64)) % self.capacity
        self.cursor = int((self.cursor + n) % self.capacity)
        overwritten = slots[self.valid[slots]]
        return slots, overwritten

    def write(
        self,
        slot: int,
        topology: int,
        graph: EncodedGraph,
        scalars: dict[str, Any],
    ) -> None:
        """One transition into ``slot`` (allocated by :meth:`allocate`)."""
        g = self.graph_columns
        for name, values in (
            ("features", graph.features),
            ("node_scalar", graph.node_scalar),
            ("compat", graph.compat),
            ("mask_bits", graph.mask_bits),
        ):
            row = g[name][slot]
            row[: len(values)] = values
            row[len(values) :] = 0
        c = self.columns
        for name, value in scalars.items():
            c[name][slot] = value
        c["topology"][slot] = topology
        c["serial"][slot] = self.serials
        self.serials += 1
        self.valid[slot] = True

    def invalidate(self, slots: IntArray) -> None:
        self.valid[slots] = False
        self.columns["topology"][slots] = -1

    def gather(self, slots: IntArray) -> StoredBatch:
        """Decode ``slots`` (which must hold live items), grouped by topology."""
        topology = self.columns["topology"][slots]
        order = np.argsort(topology, kind="stable")
        slots, topology = slots[order], topology[order]
        columns = {name: array[slots] for name, array in self.columns.items()}
        g = self.graph_columns
        groups = []
        boundaries = np.flatnonzero(np.diff(topology)) + 1
        for part in np.split(np.arange(len(slots)), boundaries):
            if len(part) == 0:
                continue
            rows = slots[part]
            choice = columns["choice"][part].astype(np.int64)
            continuous = columns["continuous"][part]
            actions = ActionBatch(
                action=_tensor(choice[:, 0]),
                seed=_tensor(choice[:, 1]),
                blueprint=_tensor(choice[:, 2]),
                blend=_tensor(choice[:, 3]),
                alpha_log_steps=_tensor(continuous[:, 0]),
                lr_log_scale=_tensor(continuous[:, 1]),
            )
            groups.append(
                decode(
                    self.topologies[int(topology[part[0]])],
                    g["features"][rows],
                    g["node_scalar"][rows],
                    g["compat"][rows],
                    g["mask_bits"][rows],
                    actions,
                )
            )
        return StoredBatch(slots, order, tuple(groups), columns)

    # -- accounting and state -------------------------------------------------------

    def row_bytes(self) -> int:
        """Bytes of one slot across every column."""
        arrays: Sequence[np.ndarray] = [*self.columns.values(), *self.graph_columns.values()]
        return int(sum(a.nbytes for a in arrays) // self.capacity) + self.valid.itemsize

    def topology_bytes(self) -> int:
        return sum(t.nbytes() for t in self.topologies.values())

    def state_dict(self) -> dict[str, Any]:
        """Arrays and JSON scalars; topologies as their structures' defining arrays."""
        state: dict[str, Any] = {
            "cursor": self.cursor,
            "serials": self.serials,
            "next_topology": self._next_topology,
            "layout": None if self.layout is None else list(dataclasses.astuple(self.layout)),
            "valid": self.valid,
            **{f"column/{k}": v for k, v in self.columns.items()},
            **{f"graph/{k}": v for k, v in self.graph_columns.items()},
        }
        for tid, topology in self.topologies.items():
            for name, array in structure_arrays(topology.structure).items():
                state[f"topology/{tid}/{name}"] = array
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = len(state["valid"])
        if saved != self.capacity:
            raise ValueError(f"state of {saved} slots, this storage has {self.capacity}")
        self.cursor = int(state["cursor"])
        self.serials = int(state["serials"])
        self._next_topology = int(state["next_topology"])
        layout = state["layout"]
        self.layout = None if layout is None else TransitionLayout(*layout)
        self.valid[:] = state["valid"]
        for name in self.columns:
            self.columns[name][...] = state[f"column/{name}"]
        self.graph_columns = {
            k.split("/", 1)[1]: np.array(v) for k, v in state.items() if k.startswith("graph/")
        }
        self.topologies, self._by_digest = {}, {}
        self._by_object.clear()
        ids = sorted({int(k.split("/")[1]) for k in state if k.startswith("topology/")})
        for tid in ids:
            prefix = f"topology/{tid}/"
            arrays = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            structure = structure_from_arrays(arrays)
            self._add_topology(tid, Topology(structure))


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values))
