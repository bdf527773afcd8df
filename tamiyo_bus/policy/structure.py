"""The static part of Tamiyo's graph: node counts, edges and their derived indices.

Everything here depends only on the host topology, where the seeds sit and which
blueprints exist, so it is built once per distinct placement and cached by the graph
builder; a step only fills values into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tamiyo_bus.policy.features import (
    BLOCK_OFFSETS,
    ENCODER_INPUT_WIDTH,
    FEATURE_SPECS,
    TYPE_COLUMN_OFFSET,
    FloatArray,
)
from tamiyo_bus.policy.registry import bucket
from tamiyo_bus.policy.schema import (
    ACTIVATION,
    BLUEPRINT,
    GLOBAL,
    LAYER,
    NODE_TYPES,
    PARAMETER,
    RELATION_INDEX,
    RELATIONS,
    SEED,
    incoming,
)
from tamiyo_bus.policy.topology import HostTopology

IntArray = npt.NDArray[np.int64]
TYPE_INDEX = {t: i for i, t in enumerate(NODE_TYPES)}
FITS = RELATION_INDEX[(BLUEPRINT, "fits", LAYER)]
FITTED_BY = RELATION_INDEX[(LAYER, "fitted_by", BLUEPRINT)]
FEEDS = RELATION_INDEX[(LAYER, "feeds", LAYER)]


def _rel(src: str, name: str, dst: str) -> int:
    return RELATION_INDEX[(src, name, dst)]


@dataclass(frozen=True, slots=True)
class HostIndex:
    """A host topology as index arrays (built once per run)."""

    topology: HostTopology
    layer_index: dict[str, int]
    depth_index: dict[int, int]  # first layer at each depth
    layer_kinds: tuple[str, ...]
    deepest: float  # the largest layer depth (1 for a flat host)
    depth_fraction: FloatArray  # [L] depth / deepest
    layer_src: IntArray  # host data-flow edges
    layer_dst: IntArray
    layer_skip: FloatArray  # 1 for edges spanning more than one depth
    act_layer: IntArray  # [A] producing layer
    param_act: IntArray  # [P] shaped activation
    param_layer: IntArray  # [P] layer of that activation

    @classmethod
    def of(cls, topology: HostTopology) -> HostIndex:
        layers = topology.layers
        layer_index = {layer.layer_id: i for i, layer in enumerate(layers)}
        depth_index: dict[int, int] = {}
        for i, layer in enumerate(layers):
            depth_index.setdefault(layer.depth, i)
        depth = np.array([layer.depth for layer in layers], dtype=np.float32)
        deepest = float(depth.max()) if len(depth) and depth.max() > 0 else 1.0
        act_index = {a.activation_id: i for i, a in enumerate(topology.activations)}
        act_layer = np.array([layer_index[a.layer_id] for a in topology.activations], np.int64)
        param_act = np.array([act_index[p.activation_id] for p in topology.parameters], np.int64)
        src = np.array([layer_index[s] for s, _ in topology.layer_edges], dtype=np.int64)
        dst = np.array([layer_index[d] for _, d in topology.layer_edges], dtype=np.int64)
        return cls(
            topology=topology,
            layer_index=layer_index,
            depth_index=depth_index,
            layer_kinds=tuple(layer.kind for layer in layers),
            deepest=deepest,
            depth_fraction=depth / deepest,
            layer_src=src,
            layer_dst=dst,
            layer_skip=(np.abs(depth[dst] - depth[src]) > 1).astype(np.float32),
            act_layer=act_layer,
            param_act=param_act,
            param_layer=act_layer[param_act] if len(param_act) else param_act,
        )


class GraphStructure:
    """Node counts and edges of one seed placement, plus indices derived from them.

    Edges are stored once, sorted by their *slot*: the pair (destination node, incoming
    relation), numbered per destination type as ``slot_offset[t] + i * (R_t + 1) + k``
    where ``R_t`` is the number of relations into type ``t`` (slot ``R_t`` of each node
    stays empty). The per-relation softmax of GAT and the per-relation mean of
    GraphSAGE are segments of this order. ``template`` is the encoder input with every
    static column (categorical ids, type indicators) filled; ``derived`` caches what a
    network layout computes from the structure.
    """

    def __init__(
        self,
        counts: tuple[int, ...],
        relation: IntArray,
        src_local: IntArray,
        dst_local: IntArray,
        relation_value: FloatArray,
    ) -> None:
        self.counts = counts
        self.offsets = tuple(int(x) for x in np.concatenate(([0], np.cumsum(counts)[:-1])))
        self.num_nodes = int(sum(counts))
        r_in = np.array([len(incoming(t)) for t in NODE_TYPES])
        slot_offsets = np.concatenate(([0], np.cumsum(np.array(counts) * (r_in + 1))))
        self.slot_offsets = tuple(int(x) for x in slot_offsets[:-1])
        self.num_slots = int(slot_offsets[-1])

        src_type = np.array([TYPE_INDEX[r.src] for r in RELATIONS])
        dst_type = np.array([TYPE_INDEX[r.dst] for r in RELATIONS])
        k_in = np.array([incoming(r.dst).index(i) for i, r in enumerate(RELATIONS)])
        dst_t = dst_type[relation]
        slot = slot_offsets[dst_t] + dst_local * (r_in[dst_t] + 1) + k_in[relation]
        order = np.argsort(slot, kind="stable")
        self.relation = relation[order]
        self.src_local = src_local[order]
        self.dst_local = dst_local[order]
        offsets = np.array(self.offsets)
        self.src = offsets[src_type[self.relation]] + self.src_local
        self.dst = offsets[dst_type[self.relation]] + self.dst_local
        self.slot = slot[order]
        self.relation_value = relation_value[order]
        self.num_edges = len(self.relation)
        self.slot_sizes = np.bincount(self.slot, minlength=self.num_slots)
        self.node_type = np.repeat(np.arange(len(NODE_TYPES)), counts)
        self.relation_positions = tuple(
            np.flatnonzero(self.relation == r) for r in range(len(RELATIONS))
        )
        # Blueprint-fit edges carry a per-step compatibility value: (position, b, l).
        fit = np.flatnonzero((self.relation == FITS) | (self.relation == FITTED_BY))
        forward = self.relation[fit] == FITS
        self.fit_positions = fit
        self.fit_blueprint = np.where(forward, self.src_local[fit], self.dst_local[fit])
        self.fit_layer = np.where(forward, self.dst_local[fit], self.src_local[fit])
        self.template = np.zeros((self.num_nodes, ENCODER_INPUT_WIDTH), dtype=np.float32)
        self.template[np.arange(self.num_nodes), TYPE_COLUMN_OFFSET + self.node_type] = 1.0
        self.derived: dict[str, object] = {}

    def rows(self, node_type: str) -> slice:
        """Rows of ``node_type`` in every node-major tensor."""
        i = TYPE_INDEX[node_type]
        return slice(self.offsets[i], self.offsets[i] + self.counts[i])

    def set_categorical(self, node_type: str, block: str, names: list[str]) -> None:
        """One-hot the stable hash of each node's id or kind into the template."""
        start = BLOCK_OFFSETS[node_type] + FEATURE_SPECS[node_type].categorical_offset(block)
        rows = np.arange(self.rows(node_type).start, self.rows(node_type).stop)
        columns = np.array([bucket(block, name) for name in names], dtype=np.int64)
        self.template[rows, start + columns] = 1.0


def build_structure(
    host: HostIndex,
    seed_layer: IntArray,
    seed_blueprint: IntArray,
    blueprint_ids: tuple[str, ...],
) -> GraphStructure:
    """Every relation's edges for this placement (see schema.RELATIONS)."""
    n_seeds, n_blueprints = len(seed_layer), len(blueprint_ids)
    n_layers, n_acts, n_params = len(host.layer_kinds), len(host.act_layer), len(host.param_act)
    counts = (1, n_seeds, n_layers, n_blueprints, n_acts, n_params)
    edges: dict[int, tuple[IntArray, IntArray]] = {}

    def both(src: str, name: str, back: str, dst: str, s: IntArray, d: IntArray) -> None:
        edges[_rel(src, name, dst)] = (s, d)
        edges[_rel(dst, back, src)] = (d, s)

    def star(node_type: str, out: str, back: str, n: int) -> None:
        both(GLOBAL, out, back, node_type, np.zeros(n, dtype=np.int64), np.arange(n))

    def complete(n_src: int, n_dst: int) -> tuple[IntArray, IntArray]:
        src, dst = np.divmod(np.arange(n_src * n_dst), max(n_dst, 1))
        return src, dst

    star(SEED, "oversees", "reports_to", n_seeds)
    star(LAYER, "oversees", "reports_to", n_layers)
    star(BLUEPRINT, "offers", "offered_to", n_blueprints)
    placed = seed_layer >= 0
    same_layer = (seed_layer[:, None] == seed_layer[None, :]) & placed[:, None]
    np.fill_diagonal(same_layer, False)
    peer_src, peer_dst = np.nonzero(same_layer)
    edges[_rel(SEED, "peers", SEED)] = (peer_src.astype(np.int64), peer_dst.astype(np.int64))
    on_layer = np.flatnonzero(placed)
    both(SEED, "monitors", "monitored_by", LAYER, on_layer, seed_layer[on_layer])
    edges[FEEDS] = (host.layer_src, host.layer_dst)
    both(LAYER, "produces", "produced_by", ACTIVATION, host.act_layer, np.arange(n_acts))
    both(ACTIVATION, "uses", "used_by", PARAMETER, host.param_act, np.arange(n_params))
    adapt = (seed_layer[:, None] == host.param_layer[None, :]) & placed[:, None]
    both(SEED, "may_adapt", "adaptable_by", PARAMETER, *np.nonzero(adapt))
    both(BLUEPRINT, "fits", "fitted_by", LAYER, *complete(n_blueprints, n_layers))
    edges[_rel(PARAMETER, "budgets", BLUEPRINT)] = complete(n_params, n_blueprints)
    grown = np.flatnonzero(seed_blueprint >= 0)
    both(SEED, "grown_from", "grows", BLUEPRINT, grown, seed_blueprint[grown])

    ordered = [edges[r] for r in range(len(RELATIONS))]
    relation = np.concatenate([np.full(len(s), r, np.int64) for r, (s, _) in enumerate(ordered)])
    value = np.zeros(len(relation), dtype=np.float32)
    value[relation == FEEDS] = host.layer_skip
    structure = GraphStructure(
        counts,
        relation,
        np.concatenate([np.asarray(s, np.int64) for s, _ in ordered]),
        np.concatenate([np.asarray(d, np.int64) for _, d in ordered]),
        value,
    )
    topo = host.topology
    structure.set_categorical(LAYER, "layer_kind", list(host.layer_kinds))
    structure.set_categorical(BLUEPRINT, "blueprint_id", list(blueprint_ids))
    structure.set_categorical(ACTIVATION, "activation_kind", [a.kind for a in topo.activations])
    structure.set_categorical(PARAMETER, "parameter_kind", [p.kind for p in topo.parameters])
    return structure
