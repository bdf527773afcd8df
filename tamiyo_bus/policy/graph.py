"""SystemStatePacket + blueprint metadata -> Tamiyo's typed graph.

The host topology is fixed for a run, so everything derived from it (node counts,
static features, edge lists, the bag/segment indices the fast policy aggregates with)
is built once per distinct seed placement and cached; a step only fills feature values
and edge features into that cached structure with a handful of vectorised numpy ops.
Blueprint identity comes from ``SeedState.blueprint_id`` and the catalogue, never from
packet ids.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.actions import ActionMasks, compute_masks
from tamiyo_bus.policy.features import (
    ACTIVATION_METRICS,
    BLOCK_OFFSETS,
    ENCODER_INPUT_WIDTH,
    FEATURE_SPECS,
    GLOBAL_METRICS,
    LAYER_METRICS,
    NUM_STAGES,
    PARAMETER_METRICS,
    SEED_METRICS,
    TYPE_COLUMN_OFFSET,
    FloatArray,
    NormalizerSnapshot,
    RawFeatures,
    RunningNormalizer,
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
from tamiyo_bus.urza_client import BlueprintMetadata

IntArray = npt.NDArray[np.int64]
EDGE_DIM = 4  # [1, source scalar, destination scalar, relation value]
_ACTIVE_STAGES = np.array(
    [
        pb.SEED_STAGE_GERMINATED,
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
    ]
)
_TYPE_INDEX = {t: i for i, t in enumerate(NODE_TYPES)}


def _rel(src: str, name: str, dst: str) -> int:
    return RELATION_INDEX[(src, name, dst)]


class GraphStructure:
    """Node counts and edges of one seed placement, plus indices derived from them.

    Edges are stored once, sorted by their *slot*: the pair (destination node, incoming
    relation), numbered per destination type as ``slot_offset[t] + i * (R_t + 1) + k``
    where ``R_t`` is the number of relations into type ``t`` and slot ``R_t`` of each
    node is its own "root" slot. Both the mean aggregation of GraphSAGE and the
    per-relation softmax of GAT are segments of this order. ``derived`` caches what
    a particular network layout computes from the structure, so it is computed once.
    """

    def __init__(
        self,
        counts: tuple[int, ...],
        relation: IntArray,
        src_local: IntArray,
        dst_local: IntArray,
        relation_value: FloatArray,
        compat_edges: IntArray,
    ) -> None:
        self.counts = counts
        self.offsets = tuple(int(x) for x in np.concatenate(([0], np.cumsum(counts)[:-1])))
        self.num_nodes = int(sum(counts))
        self.in_relations = {t: incoming(t) for t in NODE_TYPES}
        slot_offsets = [0]
        for t, n in zip(NODE_TYPES, counts, strict=True):
            slot_offsets.append(slot_offsets[-1] + n * (len(self.in_relations[t]) + 1))
        self.slot_offsets = tuple(slot_offsets[:-1])
        self.num_slots = slot_offsets[-1]

        src_type = np.array([_TYPE_INDEX[RELATIONS[r].src] for r in range(len(RELATIONS))])
        dst_type = np.array([_TYPE_INDEX[RELATIONS[r].dst] for r in range(len(RELATIONS))])
        k_in = np.array([incoming(RELATIONS[r].dst).index(r) for r in range(len(RELATIONS))])
        r_in = np.array([len(self.in_relations[t]) for t in NODE_TYPES])
        offsets = np.array(self.offsets)
        slot_off = np.array(self.slot_offsets)
        slot = slot_off[dst_type[relation]] + dst_local * (r_in[dst_type[relation]] + 1)
        slot = slot + k_in[relation]
        order = np.argsort(slot, kind="stable")
        self.relation = relation[order]
        self.src_local = src_local[order]
        self.dst_local = dst_local[order]
        self.src = offsets[src_type[self.relation]] + self.src_local
        self.dst = offsets[dst_type[self.relation]] + self.dst_local
        self.slot = slot[order]
        self.relation_value = relation_value[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        self.compat_positions = inverse[compat_edges] if len(compat_edges) else compat_edges
        self.num_edges = len(self.relation)
        self.slot_sizes = np.bincount(self.slot, minlength=self.num_slots)
        self.node_type = np.repeat(np.arange(len(NODE_TYPES)), counts)
        self.relation_positions = tuple(
            np.flatnonzero(self.relation == r) for r in range(len(RELATIONS))
        )
        self.template = self._template()
        self.derived: dict[str, object] = {}

    def rows(self, node_type: str) -> slice:
        """Rows of ``node_type`` in every node-major tensor."""
        i = _TYPE_INDEX[node_type]
        return slice(self.offsets[i], self.offsets[i] + self.counts[i])

    def count(self, node_type: str) -> int:
        return self.counts[_TYPE_INDEX[node_type]]

    def _template(self) -> FloatArray:
        x = np.zeros((self.num_nodes, ENCODER_INPUT_WIDTH), dtype=np.float32)
        x[np.arange(self.num_nodes), TYPE_COLUMN_OFFSET + self.node_type] = 1.0
        return x


@dataclass(frozen=True, slots=True)
class PolicyGraph:
    """One step's graph: structure, encoder input, edge features, masks, provenance."""

    structure: GraphStructure
    x: Tensor  # [N, ENCODER_INPUT_WIDTH], block-diagonal typed features
    edge_attr: Tensor  # [E, EDGE_DIM] in structure order
    masks: ActionMasks
    raw: dict[str, RawFeatures]
    coverage: dict[str, float]
    seed_ids: tuple[str, ...]
    seed_blueprint_ids: tuple[str, ...]
    blueprint_ids: tuple[str, ...]

    def x_dict(self) -> dict[str, Tensor]:
        """Per-type raw feature matrices (the reference's typed encoder inputs)."""
        out = {}
        for t in NODE_TYPES:
            start = BLOCK_OFFSETS[t]
            out[t] = self.x[self.structure.rows(t), start : start + FEATURE_SPECS[t].width]
        return out

    def edge_index_dict(self) -> dict[tuple[str, str, str], Tensor]:
        s = self.structure
        return {
            rel.key: torch.from_numpy(
                np.stack((s.src_local[pos], s.dst_local[pos])).astype(np.int64)
            )
            for rel, pos in zip(RELATIONS, s.relation_positions, strict=True)
        }

    def edge_attr_dict(self) -> dict[tuple[str, str, str], Tensor]:
        s = self.structure
        return {
            rel.key: self.edge_attr[torch.from_numpy(pos)]
            for rel, pos in zip(RELATIONS, s.relation_positions, strict=True)
        }


@dataclass(frozen=True, slots=True)
class _Seeds:
    ids: tuple[str, ...]
    blueprint_ids: tuple[str, ...]
    stage: IntArray
    layer: IntArray  # -1: unknown layer
    values: FloatArray
    presence: FloatArray


def _log1p(x: float) -> float:
    return math.log1p(max(x, 0.0))


class GraphBuilder:
    """Builds :class:`PolicyGraph` objects for one run's host topology.

    ``candidate_blueprints`` are the blueprint ids the policy may germinate; ids that
    seeds report but that are not candidates become extra blueprint nodes (so a seed's
    blueprint is always represented) but are never eligible for germination.
    """

    def __init__(
        self,
        topology: HostTopology,
        candidate_blueprints: Sequence[str],
        normalizer: RunningNormalizer,
        *,
        structure_cache_size: int = 8,
    ) -> None:
        self.topology = topology
        self.candidates = tuple(candidate_blueprints)
        self.normalizer = normalizer
        self._cache: OrderedDict[tuple[object, ...], GraphStructure] = OrderedDict()
        self._cache_size = structure_cache_size
        self.structure_builds = 0
        layers = topology.layers
        self._layer_index = {layer.layer_id: i for i, layer in enumerate(layers)}
        self._depth_index: dict[int, int] = {}
        for i, layer in enumerate(layers):
            self._depth_index.setdefault(layer.depth, i)
        self._max_depth = max((layer.depth for layer in layers), default=0) or 1
        self._layer_kinds = tuple(layer.kind for layer in layers)
        act_index = {a.activation_id: i for i, a in enumerate(topology.activations)}
        self._act_layer = np.array(
            [self._layer_index[a.layer_id] for a in topology.activations], dtype=np.int64
        )
        self._param_act = np.array(
            [act_index[p.activation_id] for p in topology.parameters], dtype=np.int64
        )
        self._param_layer = (
            self._act_layer[self._param_act]
            if len(self._param_act)
            else (np.zeros(0, dtype=np.int64))
        )
        edges = topology.layer_edges
        self._layer_src = np.array([self._layer_index[s] for s, _ in edges], dtype=np.int64)
        self._layer_dst = np.array([self._layer_index[d] for _, d in edges], dtype=np.int64)
        depth = np.array([layer.depth for layer in layers], dtype=np.float32)
        self._layer_skip = (np.abs(depth[self._layer_dst] - depth[self._layer_src]) > 1).astype(
            np.float32
        )
        self._layer_depth_fraction = depth / self._max_depth
        self._static = self._static_features()
        self._metric_keys = {
            LAYER: [f"layer/{la.layer_id}/{m}" for la in layers for m in LAYER_METRICS],
            ACTIVATION: [
                f"activation/{a.activation_id}/{m}"
                for a in topology.activations
                for m in ACTIVATION_METRICS
            ],
            PARAMETER: [
                f"parameter/{p.parameter_id}/{m}"
                for p in topology.parameters
                for m in PARAMETER_METRICS
            ],
        }

    # ------------------------------------------------------------------ per step

    def build(
        self, packet: pb.SystemStatePacket, metadata: Mapping[str, BlueprintMetadata]
    ) -> PolicyGraph:
        """The graph of ``packet``, enriched with whatever ``metadata`` is known."""
        snapshot = self.normalizer.snapshot
        seeds = self._seeds(packet)
        blueprint_ids = self.candidates + tuple(
            dict.fromkeys(b for b in seeds.blueprint_ids if b and b not in self.candidates)
        )
        index = {b: i for i, b in enumerate(blueprint_ids)}
        seed_blueprint = np.array([index.get(b, -1) for b in seeds.blueprint_ids], dtype=np.int64)
        structure = self._structure(seeds.layer, seed_blueprint, blueprint_ids)
        metrics = dict(packet.training_metrics)
        active = np.isin(seeds.stage, _ACTIVE_STAGES)

        raw = {
            GLOBAL: self._global(packet, metrics, len(seeds.ids), int(active.sum())),
            SEED: RawFeatures(seeds.values, seeds.presence),
            LAYER: self._layers(metrics, seeds.layer[active]),
            BLUEPRINT: self._blueprints(blueprint_ids, metadata, seed_blueprint),
            ACTIVATION: self._metric_features(ACTIVATION, metrics),
            PARAMETER: self._metric_features(PARAMETER, metrics),
        }
        x = structure.template.copy()
        for t in NODE_TYPES:
            self._write(x, structure, t, raw[t], snapshot)
        seed_spec = FEATURE_SPECS[SEED]
        seed_rows = np.arange(structure.rows(SEED).start, structure.rows(SEED).stop)
        stage_column = np.where((seeds.stage >= 0) & (seeds.stage < NUM_STAGES), seeds.stage, 0)
        x[seed_rows, BLOCK_OFFSETS[SEED] + seed_spec.categorical_offset("stage") + stage_column] = 1
        x[seed_rows, BLOCK_OFFSETS[SEED] + seed_spec.categorical_offset("has_blueprint")] = (
            seed_blueprint >= 0
        )

        compat = self._compatibility(blueprint_ids, metadata)
        scalar = np.zeros(structure.num_nodes, dtype=np.float32)
        scalar[structure.rows(SEED)] = seeds.values[:, 0]
        scalar[structure.rows(LAYER)] = self._layer_depth_fraction
        scalar[structure.rows(BLUEPRINT)] = raw[BLUEPRINT].values[:, 0]
        edge_attr = np.empty((structure.num_edges, 4), dtype=np.float32)
        edge_attr[:, 0] = 1.0
        edge_attr[:, 1] = scalar[structure.src]
        edge_attr[:, 2] = scalar[structure.dst]
        relation_value = structure.relation_value.copy()
        if len(structure.compat_positions):
            pos = structure.compat_positions
            blueprint_local = np.where(
                structure.relation[pos] == _rel(BLUEPRINT, "fits", LAYER),
                structure.src_local[pos],
                structure.dst_local[pos],
            )
            layer_local = np.where(
                structure.relation[pos] == _rel(BLUEPRINT, "fits", LAYER),
                structure.dst_local[pos],
                structure.src_local[pos],
            )
            relation_value[pos] = compat[blueprint_local, layer_local]
        edge_attr[:, 3] = relation_value

        eligible = np.array(
            [
                b in metadata and not metadata[b].quarantined and i < len(self.candidates)
                for i, b in enumerate(blueprint_ids)
            ],
            dtype=np.bool_,
        )
        layer_ok = np.ones((len(seeds.ids), len(blueprint_ids)), dtype=np.bool_)
        known_layer = seeds.layer >= 0
        layer_ok[known_layer] = (compat[:, seeds.layer[known_layer]] == 1.0).T
        unrestricted = np.array(
            [not (b in metadata and metadata[b].compatible_layer_kinds) for b in blueprint_ids],
            dtype=np.bool_,
        )
        layer_ok[~known_layer] = unrestricted
        masks = compute_masks(seeds.stage, layer_ok & eligible)
        return PolicyGraph(
            structure=structure,
            x=torch.from_numpy(x),
            edge_attr=torch.from_numpy(edge_attr),
            masks=masks,
            raw=raw,
            coverage={t: raw[t].coverage() for t in NODE_TYPES},
            seed_ids=seeds.ids,
            seed_blueprint_ids=seeds.blueprint_ids,
            blueprint_ids=blueprint_ids,
        )

    @staticmethod
    def _write(
        x: FloatArray,
        structure: GraphStructure,
        node_type: str,
        raw: RawFeatures,
        snapshot: NormalizerSnapshot,
    ) -> None:
        rows = structure.rows(node_type)
        start = BLOCK_OFFSETS[node_type]
        width = FEATURE_SPECS[node_type].num_values
        x[rows, start : start + width] = snapshot.normalize(node_type, raw)
        x[rows, start + width : start + 2 * width] = raw.presence

    def _seeds(self, packet: pb.SystemStatePacket) -> _Seeds:
        states = packet.seed_states
        n = len(states)
        spec = FEATURE_SPECS[SEED]
        values = np.zeros((n, spec.num_values), dtype=np.float32)
        ids: list[str] = []
        blueprint_ids: list[str] = []
        stage = np.zeros(n, dtype=np.int64)
        layer = np.full(n, -1, dtype=np.int64)
        rows: list[list[float]] = []
        for i, seed in enumerate(states):
            ids.append(seed.seed_id)
            blueprint_ids.append(seed.blueprint_id)
            stage[i] = seed.stage
            found = self._layer_index.get(seed.layer_id)
            if found is None:
                found = self._depth_index.get(seed.layer_depth)
            if found is not None:
                layer[i] = found
            lr = seed.learning_rate
            metrics = seed.metrics
            rows.append(
                [
                    seed.alpha,
                    _log1p(seed.gradient_norm),
                    math.log10(lr) if lr > 0 else math.nan,
                    _log1p(seed.age),
                    seed.risk_score,
                    seed.layer_depth / self._max_depth,
                    *(metrics.get(m, math.nan) for m in SEED_METRICS),
                ]
            )
        if rows:
            values = np.array(rows, dtype=np.float32)
        presence = np.isfinite(values).astype(np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        return _Seeds(tuple(ids), tuple(blueprint_ids), stage, layer, values, presence)

    def _global(
        self, packet: pb.SystemStatePacket, metrics: dict[str, float], seeds: int, active: int
    ) -> RawFeatures:
        row = [
            packet.training_loss,
            packet.validation_loss,
            packet.validation_accuracy,
            _log1p(packet.current_epoch),
            _log1p(packet.global_step),
            float(seeds),
            active / seeds if seeds else 0.0,
            *(metrics.get(m, math.nan) for m in GLOBAL_METRICS),
        ]
        return _finite(np.array([row], dtype=np.float32))

    def _layers(self, metrics: dict[str, float], active_layers: IntArray) -> RawFeatures:
        n = len(self.topology.layers)
        static_values, static_presence = self._static[LAYER]
        counts = np.bincount(active_layers, minlength=n).astype(np.float32)
        dynamic = self._lookup(LAYER, metrics).reshape(n, len(LAYER_METRICS))
        live = _finite(dynamic)
        values = np.concatenate((static_values, counts[:, None], live.values), axis=1)
        presence = np.concatenate(
            (static_presence, np.ones((n, 1), dtype=np.float32), live.presence), axis=1
        )
        return RawFeatures(values, presence)

    def _blueprints(
        self,
        blueprint_ids: tuple[str, ...],
        metadata: Mapping[str, BlueprintMetadata],
        seed_blueprint: IntArray,
    ) -> RawFeatures:
        n = len(blueprint_ids)
        values = np.zeros((n, FEATURE_SPECS[BLUEPRINT].num_values), dtype=np.float32)
        presence = np.zeros_like(values)
        for i, blueprint_id in enumerate(blueprint_ids):
            meta = metadata.get(blueprint_id)
            if meta is not None:
                values[i, :4] = (
                    meta.risk,
                    meta.tier,
                    _log1p(meta.parameter_count),
                    float(meta.quarantined),
                )
                presence[i, :4] = 1.0
        used = seed_blueprint[seed_blueprint >= 0]
        values[:, 4] = np.bincount(used, minlength=n)[:n]
        presence[:, 4] = 1.0
        return _finite_pair(values, presence)

    def _metric_features(self, node_type: str, metrics: dict[str, float]) -> RawFeatures:
        static_values, static_presence = self._static[node_type]
        n = static_values.shape[0]
        per_node = len(self._metric_keys[node_type]) // n if n else 0
        live = _finite(self._lookup(node_type, metrics).reshape(n, per_node))
        return RawFeatures(
            np.concatenate((static_values, live.values), axis=1),
            np.concatenate((static_presence, live.presence), axis=1),
        )

    def _lookup(self, node_type: str, metrics: dict[str, float]) -> FloatArray:
        return np.array(
            [metrics.get(k, math.nan) for k in self._metric_keys[node_type]], dtype=np.float32
        )

    def _compatibility(
        self, blueprint_ids: tuple[str, ...], metadata: Mapping[str, BlueprintMetadata]
    ) -> FloatArray:
        """[B, L]: 1 known to fit, 0 known not to fit, 0.5 unknown (no metadata)."""
        compat = np.full((len(blueprint_ids), len(self._layer_kinds)), 0.5, dtype=np.float32)
        for i, blueprint_id in enumerate(blueprint_ids):
            meta = metadata.get(blueprint_id)
            if meta is not None:
                compat[i] = [1.0 if meta.fits(kind) else 0.0 for kind in self._layer_kinds]
        return compat

    # ------------------------------------------------------------------ static

    def _static_features(self) -> dict[str, tuple[FloatArray, FloatArray]]:
        """Value columns that only depend on the topology (with presence)."""
        topo = self.topology
        n_layers = len(topo.layers)
        fan_in = np.bincount(self._layer_dst, minlength=n_layers).astype(np.float32)
        fan_out = np.bincount(self._layer_src, minlength=n_layers).astype(np.float32)
        layer_values: FloatArray = (
            np.stack(
                (
                    self._layer_depth_fraction,
                    np.array([_log1p(la.parameter_count) for la in topo.layers], dtype=np.float32),
                    fan_in,
                    fan_out,
                ),
                axis=1,
            )
            .reshape(n_layers, 4)
            .astype(np.float32)
        )
        param_values: FloatArray = np.array(
            [[_log1p(p.numel)] for p in topo.parameters], dtype=np.float32
        ).reshape(len(topo.parameters), 1)
        n_acts = len(topo.activations)
        return {
            LAYER: (layer_values, np.ones_like(layer_values)),
            ACTIVATION: (np.zeros((n_acts, 0), np.float32), np.zeros((n_acts, 0), np.float32)),
            PARAMETER: (param_values, np.ones_like(param_values)),
        }

    def _structure(
        self, seed_layer: IntArray, seed_blueprint: IntArray, blueprint_ids: tuple[str, ...]
    ) -> GraphStructure:
        key = (seed_layer.tobytes(), seed_blueprint.tobytes(), blueprint_ids)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        structure = self._new_structure(seed_layer, seed_blueprint, blueprint_ids)
        self._cache[key] = structure
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.structure_builds += 1
        return structure

    def _new_structure(
        self, seed_layer: IntArray, seed_blueprint: IntArray, blueprint_ids: tuple[str, ...]
    ) -> GraphStructure:
        n_seeds = len(seed_layer)
        n_layers = len(self.topology.layers)
        n_blueprints = len(blueprint_ids)
        n_acts = len(self.topology.activations)
        n_params = len(self.topology.parameters)
        counts = (1, n_seeds, n_layers, n_blueprints, n_acts, n_params)
        edges: dict[int, tuple[IntArray, IntArray]] = {}

        def both(src: str, name: str, back: str, dst: str, s: IntArray, d: IntArray) -> None:
            edges[_rel(src, name, dst)] = (s, d)
            edges[_rel(dst, back, src)] = (d, s)

        def star(node_type: str, n: int) -> None:
            both(
                GLOBAL,
                "oversees" if node_type != BLUEPRINT else "offers",
                "reports_to" if node_type != BLUEPRINT else "offered_to",
                node_type,
                np.zeros(n, dtype=np.int64),
                np.arange(n),
            )

        star(SEED, n_seeds)
        star(LAYER, n_layers)
        star(BLUEPRINT, n_blueprints)
        placed = seed_layer >= 0
        same = (seed_layer[:, None] == seed_layer[None, :]) & placed[:, None]
        np.fill_diagonal(same, False)
        peer_src, peer_dst = np.nonzero(same)
        edges[_rel(SEED, "peers", SEED)] = (peer_src, peer_dst)
        seeds_placed = np.flatnonzero(placed)
        both(SEED, "monitors", "monitored_by", LAYER, seeds_placed, seed_layer[seeds_placed])
        edges[_rel(LAYER, "feeds", LAYER)] = (self._layer_src, self._layer_dst)
        both(LAYER, "produces", "produced_by", ACTIVATION, self._act_layer, np.arange(n_acts))
        both(ACTIVATION, "uses", "used_by", PARAMETER, self._param_act, np.arange(n_params))
        adapt = (seed_layer[:, None] == self._param_layer[None, :]) & placed[:, None]
        adapt_src, adapt_dst = np.nonzero(adapt)
        both(SEED, "may_adapt", "adaptable_by", PARAMETER, adapt_src, adapt_dst)
        fit_b, fit_l = np.divmod(np.arange(n_blueprints * n_layers), max(n_layers, 1))
        both(BLUEPRINT, "fits", "fitted_by", LAYER, fit_b, fit_l)
        budget_p, budget_b = np.divmod(np.arange(n_params * n_blueprints), max(n_blueprints, 1))
        edges[_rel(PARAMETER, "budgets", BLUEPRINT)] = (budget_p, budget_b)
        grown = np.flatnonzero(seed_blueprint >= 0)
        both(SEED, "grown_from", "grows", BLUEPRINT, grown, seed_blueprint[grown])

        relation_parts, src_parts, dst_parts, value_parts = [], [], [], []
        compat_parts = []
        position = 0
        for r in range(len(RELATIONS)):
            s, d = edges[r]
            relation_parts.append(np.full(len(s), r, dtype=np.int64))
            src_parts.append(np.asarray(s, dtype=np.int64))
            dst_parts.append(np.asarray(d, dtype=np.int64))
            value = np.zeros(len(s), dtype=np.float32)
            if r == _rel(LAYER, "feeds", LAYER):
                value = self._layer_skip.copy()
            if r in (_rel(BLUEPRINT, "fits", LAYER), _rel(LAYER, "fitted_by", BLUEPRINT)):
                compat_parts.append(np.arange(position, position + len(s)))
            value_parts.append(value)
            position += len(s)
        structure = GraphStructure(
            counts,
            np.concatenate(relation_parts),
            np.concatenate(src_parts),
            np.concatenate(dst_parts),
            np.concatenate(value_parts),
            np.concatenate(compat_parts),
        )
        topo = self.topology
        for node_type, block, names in (
            (LAYER, "layer_kind", [layer.kind for layer in topo.layers]),
            (BLUEPRINT, "blueprint_id", list(blueprint_ids)),
            (ACTIVATION, "activation_kind", [a.kind for a in topo.activations]),
            (PARAMETER, "parameter_kind", [p.kind for p in topo.parameters]),
        ):
            # Static categorical one-hots live in the structure's template.
            start = BLOCK_OFFSETS[node_type] + FEATURE_SPECS[node_type].categorical_offset(block)
            rows = np.arange(structure.rows(node_type).start, structure.rows(node_type).stop)
            columns = np.array([bucket(block, name) for name in names], dtype=np.int64)
            structure.template[rows, start + columns] = 1.0
        return structure


def _finite(values: FloatArray) -> RawFeatures:
    presence = np.isfinite(values).astype(np.float32)
    return RawFeatures(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), presence)


def _finite_pair(values: FloatArray, presence: FloatArray) -> RawFeatures:
    finite = np.isfinite(values)
    return RawFeatures(np.where(finite, values, 0.0).astype(np.float32), presence * finite)
