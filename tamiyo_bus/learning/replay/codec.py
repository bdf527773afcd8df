"""A policy graph as one fixed-width row of per-step values, plus its shared topology.

Everything a :class:`GraphStructure` fixes (node counts, edges, the static categorical
columns of the encoder input) is stored once per topology; a transition keeps only
what a step fills in:

- the per-step feature cells: every value and presence column, and each categorical
  block the structure's template leaves empty (a seed's lifecycle stage), as float16;
- each node's edge scalar and the blueprint x layer compatibility, from which
  ``edge_features`` rebuilds every edge feature;
- the action masks, as packed bits.

float16 keeps the normalised features (clipped to +-10) to about three significant
digits; 0/1 presence, one-hot and compatibility values are exact.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from tamiyo_bus.learning.graph_batch import GraphGroup
from tamiyo_bus.learning.hierarchical import ActionBatch
from tamiyo_bus.policy.actions import NUM_ACTIONS, SEED_ACTIONS, ActionMasks
from tamiyo_bus.policy.features import BLOCK_OFFSETS, FEATURE_SPECS
from tamiyo_bus.policy.graph import PolicyGraph, edge_features
from tamiyo_bus.policy.schema import BLUEPRINT, LAYER, NODE_TYPES, SEED
from tamiyo_bus.policy.structure import GraphStructure

IntArray = npt.NDArray[np.int64]
FEATURE_DTYPE = np.float16
_SEED_COLUMNS = len(SEED_ACTIONS)


def _per_step_columns(structure: GraphStructure, node_type: str) -> IntArray:
    """Local columns of ``node_type``'s block that change from step to step: its value
    and presence columns, and every categorical block the template does not fill."""
    spec = FEATURE_SPECS[node_type]
    rows, start = structure.rows(node_type), BLOCK_OFFSETS[node_type]
    columns = list(range(2 * spec.num_values))
    for name, width in spec.categorical:
        offset = spec.categorical_offset(name)
        if not structure.template[rows, start + offset : start + offset + width].any():
            columns.extend(range(offset, offset + width))
    return np.array(columns, dtype=np.int64)


def structure_arrays(structure: GraphStructure) -> dict[str, np.ndarray]:
    """The arrays that define ``structure`` (everything else is derived from them)."""
    return {
        "counts": np.array(structure.counts, np.int64),
        "relation": structure.relation,
        "src_local": structure.src_local,
        "dst_local": structure.dst_local,
        "relation_value": structure.relation_value,
        "template": structure.template,
    }


def structure_from_arrays(arrays: Mapping[str, np.ndarray]) -> GraphStructure:
    """The structure :func:`structure_arrays` described; ValueError when the arrays do
    not make one (missing, mis-shaped or out-of-range edges)."""
    try:
        counts = tuple(int(c) for c in np.asarray(arrays["counts"], np.int64))
        structure = GraphStructure(
            counts,
            np.asarray(arrays["relation"], np.int64),
            np.asarray(arrays["src_local"], np.int64),
            np.asarray(arrays["dst_local"], np.int64),
            np.asarray(arrays["relation_value"], np.float32),
        )
        structure.template[...] = arrays["template"]
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise ValueError(f"not a graph structure: {error}") from error
    return structure


def structure_digest(structure: GraphStructure) -> str:
    """Content identity of a structure: equal digests, interchangeable topologies."""
    h = hashlib.sha256()
    for array in structure_arrays(structure).values():
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


class Topology:
    """One structure and the index arrays that encode and decode its graphs."""

    def __init__(self, structure: GraphStructure) -> None:
        s = self.structure = structure
        self.digest = structure_digest(structure)
        width = s.template.shape[1]
        self.columns = {t: _per_step_columns(s, t) for t in NODE_TYPES}
        self.templates = {
            t: s.template[s.rows(t), BLOCK_OFFSETS[t] : BLOCK_OFFSETS[t] + FEATURE_SPECS[t].width]
            for t in NODE_TYPES
        }
        spans, cells, start = {}, [], 0
        for t in NODE_TYPES:
            rows = np.arange(s.rows(t).start, s.rows(t).stop)
            flat = rows[:, None] * width + BLOCK_OFFSETS[t] + self.columns[t][None, :]
            cells.append(flat.reshape(-1))
            spans[t] = (start, start + flat.size)
            start += flat.size
        self.cells = np.concatenate(cells)  # positions in the flattened [N, W] input
        self.spans = spans
        self.num_seeds = s.counts[NODE_TYPES.index(SEED)]
        self.num_blueprints = s.counts[NODE_TYPES.index(BLUEPRINT)]
        self.num_layers = s.counts[NODE_TYPES.index(LAYER)]
        self.mask_bits = NUM_ACTIONS + self.num_seeds * (_SEED_COLUMNS + self.num_blueprints)

    @property
    def feature_cells(self) -> int:
        return int(self.cells.size)

    @property
    def compat_cells(self) -> int:
        return self.num_blueprints * self.num_layers

    def nbytes(self) -> int:
        """Bytes of this topology's arrays, its structure's included (after a reload the
        replay is the structure's only holder)."""
        arrays = [v for v in vars(self.structure).values() if isinstance(v, np.ndarray)]
        arrays += [self.cells, *self.columns.values()]
        return int(sum(a.nbytes for a in arrays))


@dataclass(frozen=True, slots=True)
class TransitionLayout:
    """Widths of a stored row; every topology of the replay must fit them."""

    feature_cells: int
    node_cells: int
    compat_cells: int
    mask_bits: int

    @classmethod
    def fitting(cls, topology: Topology, headroom_fraction: float = 0.0) -> TransitionLayout:
        def widen(n: int) -> int:
            return math.ceil(n * (1.0 + headroom_fraction))

        return cls(
            widen(topology.feature_cells),
            widen(topology.structure.num_nodes),
            widen(topology.compat_cells),
            widen(topology.mask_bits),
        )

    def admits(self, topology: Topology) -> bool:
        return (
            topology.feature_cells <= self.feature_cells
            and topology.structure.num_nodes <= self.node_cells
            and topology.compat_cells <= self.compat_cells
            and topology.mask_bits <= self.mask_bits
        )


@dataclass(frozen=True, slots=True)
class EncodedGraph:
    features: npt.NDArray[np.float16]
    node_scalar: npt.NDArray[np.float16]
    compat: npt.NDArray[np.float16]
    mask_bits: npt.NDArray[np.uint8]  # packed


@dataclass(frozen=True, slots=True)
class EncodedStep:
    """A graph that arrived already encoded against ``topology`` (experience from the
    bus): the replay stores its cells as they are."""

    topology: Topology
    cells: EncodedGraph

    @property
    def structure(self) -> GraphStructure:
        return self.topology.structure


def encode(topology: Topology, graph: PolicyGraph) -> EncodedGraph:
    """The per-step part of ``graph`` (whose structure is ``topology``'s)."""
    s = topology.structure
    x = graph.x.numpy().reshape(-1)
    edge_attr = graph.edge_attr.numpy()
    scalar = np.zeros(s.num_nodes, dtype=np.float32)
    scalar[s.src] = edge_attr[:, 1]
    scalar[s.dst] = edge_attr[:, 2]
    compat = np.zeros((topology.num_blueprints, topology.num_layers), dtype=np.float32)
    compat[s.fit_blueprint, s.fit_layer] = edge_attr[s.fit_positions, 3]
    m = graph.masks
    bits = np.concatenate(
        (m.action.numpy(), m.seed.numpy().reshape(-1), m.blueprint.numpy().reshape(-1))
    )
    return EncodedGraph(
        x[topology.cells].astype(FEATURE_DTYPE),
        scalar.astype(FEATURE_DTYPE),
        compat.reshape(-1).astype(FEATURE_DTYPE),
        np.packbits(bits),
    )


def decode(
    topology: Topology,
    features: npt.NDArray[np.float16],
    node_scalar: npt.NDArray[np.float16],
    compat: npt.NDArray[np.float16],
    mask_bits: npt.NDArray[np.uint8],
    actions: ActionBatch,
) -> GraphGroup:
    """G stored rows (padded to the layout's widths) of one topology as a GraphGroup."""
    s = topology.structure
    n = features.shape[0]
    x = {}
    for t in NODE_TYPES:
        template = topology.templates[t]
        columns = topology.columns[t]
        typed = np.repeat(template[None], n, axis=0)
        start, stop = topology.spans[t]
        typed[:, :, columns] = features[:, start:stop].reshape(n, template.shape[0], len(columns))
        x[t] = torch.from_numpy(typed)
    b, layers = topology.num_blueprints, topology.num_layers
    edge_attr = edge_features(
        s,
        node_scalar[:, : s.num_nodes].astype(np.float32),
        compat[:, : b * layers].astype(np.float32).reshape(n, b, layers),
    )
    bits = np.unpackbits(mask_bits, axis=1, count=topology.mask_bits).astype(np.bool_)
    seeds, k = topology.num_seeds, _SEED_COLUMNS
    seed_end = NUM_ACTIONS + seeds * k
    masks = ActionMasks(
        torch.from_numpy(bits[:, :NUM_ACTIONS]),
        torch.from_numpy(np.ascontiguousarray(bits[:, NUM_ACTIONS:seed_end]).reshape(n, seeds, k)),
        torch.from_numpy(np.ascontiguousarray(bits[:, seed_end:]).reshape(n, seeds, b)),
    )
    return GraphGroup(s, x, torch.from_numpy(edge_attr), masks, actions)
