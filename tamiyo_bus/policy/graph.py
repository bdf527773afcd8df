"""SystemStatePacket + blueprint metadata -> Tamiyo's typed graph.

The host topology is fixed for a run, so everything derived from it (node counts,
static features, edge lists, the indices the fast policy aggregates with) is built
once per distinct seed placement and cached (see ``structure``); a step only fills
feature values and edge features into the cached structure with a handful of
vectorised numpy operations. Blueprint identity comes from ``SeedState.blueprint_id``
and the catalogue, never from packet ids.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.actions import ActionMasks, compute_masks
from tamiyo_bus.policy.features import (
    ACTIVATION_METRICS,
    BLOCK_OFFSETS,
    FEATURE_SPECS,
    GLOBAL_METRICS,
    LAYER_METRICS,
    NUM_STAGES,
    PARAMETER_METRICS,
    SEED_METRICS,
    FloatArray,
    RawFeatures,
    RunningNormalizer,
)
from tamiyo_bus.policy.schema import (
    ACTIVATION,
    BLUEPRINT,
    GLOBAL,
    LAYER,
    NODE_TYPES,
    PARAMETER,
    RELATIONS,
    SEED,
)
from tamiyo_bus.policy.signals import gradient_signal, gradient_surge
from tamiyo_bus.policy.structure import GraphStructure, HostIndex, IntArray, build_structure
from tamiyo_bus.policy.topology import HostTopology
from tamiyo_bus.urza_client import BlueprintMetadata

EDGE_DIM = 4  # [1, source scalar, destination scalar, relation value]
# Lifecycle stages in which a seed occupies its slot and changes the host.
_ACTIVE = np.zeros(NUM_STAGES, dtype=np.bool_)
_ACTIVE[
    [
        pb.SEED_STAGE_GERMINATED,
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
    ]
] = True
_SEED_STAGE = BLOCK_OFFSETS[SEED] + FEATURE_SPECS[SEED].categorical_offset("stage")
_SEED_HAS_BLUEPRINT = BLOCK_OFFSETS[SEED] + FEATURE_SPECS[SEED].categorical_offset("has_blueprint")


@dataclass(frozen=True, slots=True)
class PolicyGraph:
    """One step's graph: structure, encoder input, edge features, masks, provenance."""

    structure: GraphStructure
    x: Tensor  # [N, ENCODER_INPUT_WIDTH], block-diagonal typed features
    edge_attr: Tensor  # [E, EDGE_DIM] in structure order
    masks: ActionMasks
    raw: dict[str, RawFeatures]  # un-normalised values, for the running statistics
    coverage: dict[str, float]  # fraction of feature values present, per node type
    seed_ids: tuple[str, ...]
    seed_blueprint_ids: tuple[str, ...]
    blueprint_ids: tuple[str, ...]

    def x_dict(self) -> dict[str, Tensor]:
        """Per-type feature matrices (the reference's typed encoder inputs)."""
        out = {}
        for t in NODE_TYPES:
            start = BLOCK_OFFSETS[t]
            out[t] = self.x[self.structure.rows(t), start : start + FEATURE_SPECS[t].width]
        return out

    def edge_index_dict(self) -> dict[tuple[str, str, str], Tensor]:
        s = self.structure
        return {
            rel.key: torch.from_numpy(np.stack((s.src_local[pos], s.dst_local[pos])))
            for rel, pos in zip(RELATIONS, s.relation_positions, strict=True)
        }

    def edge_attr_dict(self) -> dict[tuple[str, str, str], Tensor]:
        s = self.structure
        return {
            rel.key: self.edge_attr[torch.from_numpy(pos).to(self.edge_attr.device)]
            for rel, pos in zip(RELATIONS, s.relation_positions, strict=True)
        }


def edge_features(
    structure: GraphStructure, node_scalar: FloatArray, fit_compat: FloatArray
) -> FloatArray:
    """[1, source scalar, destination scalar, relation value] per edge.

    The per-step inputs are each node's scalar (seed alpha, layer depth, blueprint
    risk) and the blueprint x layer compatibility that blueprint-fit edges carry as
    their relation value. Leading axes of both (stacked graphs, as replay decodes
    them) carry through to the result: [..., E, EDGE_DIM].
    """
    lead = node_scalar.shape[:-1]
    out = np.empty((*lead, structure.num_edges, EDGE_DIM), dtype=np.float32)
    out[..., 0] = 1.0
    out[..., 1] = node_scalar[..., structure.src]
    out[..., 2] = node_scalar[..., structure.dst]
    out[..., 3] = structure.relation_value
    out[..., structure.fit_positions, 3] = fit_compat[
        ..., structure.fit_blueprint, structure.fit_layer
    ]
    return out


@dataclass(frozen=True, slots=True)
class _Seeds:
    ids: tuple[str, ...]
    blueprint_ids: tuple[str, ...]
    stage: IntArray
    layer: IntArray  # -1: unknown layer
    values: FloatArray
    presence: FloatArray


@dataclass(frozen=True, slots=True)
class _Enrichment:
    """What the blueprint metadata of one catalogue state contributes to a graph."""

    values: FloatArray  # [B, 4] risk, tier, log parameter count, quarantined
    presence: FloatArray  # [B, 4]
    compat: FloatArray  # [B, L] 1 fits, 0 does not, 0.5 unknown
    eligible: np.ndarray  # [B] may be germinated
    unrestricted: np.ndarray  # [B] fits any layer kind (or unknown)


def _log1p(x: float) -> float:
    return math.log1p(max(x, 0.0))


def _finite(values: FloatArray, presence: FloatArray | None = None) -> RawFeatures:
    """Non-finite values are absent: presence 0 and value 0."""
    finite = np.isfinite(values)
    kept = np.where(finite, values, np.float32(0.0)).astype(np.float32)
    mask = finite.astype(np.float32)
    return RawFeatures(kept, mask if presence is None else presence * mask)


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
        self.host = host = HostIndex.of(topology)
        self._cache: OrderedDict[tuple[object, ...], GraphStructure] = OrderedDict()
        self._cache_size = structure_cache_size
        self._enrichment: tuple[tuple[object, ...], _Enrichment] | None = None
        self.structure_builds = 0
        n_layers = len(topology.layers)
        layer_static = np.stack(
            (
                host.depth_fraction,
                np.array([_log1p(la.parameter_count) for la in topology.layers], np.float32),
                np.bincount(host.layer_dst, minlength=n_layers).astype(np.float32),
                np.bincount(host.layer_src, minlength=n_layers).astype(np.float32),
            ),
            axis=1,
        ).reshape(n_layers, 4)
        self._layer_parameters = np.array(
            [la.parameter_count for la in topology.layers], dtype=np.float32
        )
        param_static = np.array([[_log1p(p.numel)] for p in topology.parameters], np.float32)
        self._static: dict[str, FloatArray] = {
            LAYER: layer_static.astype(np.float32),
            ACTIVATION: np.zeros((len(topology.activations), 0), np.float32),
            PARAMETER: param_static.reshape(len(topology.parameters), 1),
        }
        # A layer's averaged gradient norm, or its latest where no average is reported.
        self._layer_norm_keys = [
            (f"layer/{la.layer_id}/gradient_norm_ema", f"layer/{la.layer_id}/gradient_norm")
            for la in topology.layers
        ]
        self._metric_keys = {
            LAYER: [f"layer/{la.layer_id}/{m}" for la in topology.layers for m in LAYER_METRICS],
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
        enrichment = self._enrich(blueprint_ids, metadata)
        metrics = dict(packet.training_metrics)
        active = _ACTIVE[seeds.stage]
        n_blueprints = len(blueprint_ids)
        used = np.bincount(seed_blueprint[seed_blueprint >= 0], minlength=n_blueprints)
        raw = {
            GLOBAL: self._global(packet, metrics, len(seeds.ids), int(active.sum())),
            SEED: RawFeatures(seeds.values, seeds.presence),
            LAYER: self._with_metrics(LAYER, metrics, self._layer_dynamic(seeds, active, metrics)),
            BLUEPRINT: RawFeatures(
                np.concatenate((enrichment.values, used[:, None].astype(np.float32)), axis=1),
                np.concatenate((enrichment.presence, np.ones((n_blueprints, 1), np.float32)), 1),
            ),
            ACTIVATION: self._with_metrics(ACTIVATION, metrics),
            PARAMETER: self._with_metrics(PARAMETER, metrics),
        }

        x = structure.template.copy()
        for t in NODE_TYPES:
            rows, start = structure.rows(t), BLOCK_OFFSETS[t]
            width = FEATURE_SPECS[t].num_values
            x[rows, start : start + width] = snapshot.normalize(t, raw[t])
            x[rows, start + width : start + 2 * width] = raw[t].presence
        seed_rows = np.arange(structure.rows(SEED).start, structure.rows(SEED).stop)
        x[seed_rows, _SEED_STAGE + seeds.stage] = 1.0
        x[seed_rows, _SEED_HAS_BLUEPRINT] = seed_blueprint >= 0

        scalar = np.zeros(structure.num_nodes, dtype=np.float32)
        scalar[structure.rows(SEED)] = seeds.values[:, 0]  # alpha
        scalar[structure.rows(LAYER)] = self.host.depth_fraction
        scalar[structure.rows(BLUEPRINT)] = enrichment.values[:, 0]  # risk
        edge_attr = edge_features(structure, scalar, enrichment.compat)

        placed = seeds.layer >= 0
        fits = np.empty((len(seeds.ids), n_blueprints), dtype=np.bool_)
        fits[placed] = (enrichment.compat[:, seeds.layer[placed]] == 1.0).T
        fits[~placed] = enrichment.unrestricted
        return PolicyGraph(
            structure=structure,
            x=torch.from_numpy(x),
            edge_attr=torch.from_numpy(edge_attr),
            masks=compute_masks(seeds.stage, fits & enrichment.eligible),
            raw=raw,
            coverage={t: raw[t].coverage() for t in NODE_TYPES},
            seed_ids=seeds.ids,
            seed_blueprint_ids=seeds.blueprint_ids,
            blueprint_ids=blueprint_ids,
        )

    def _seeds(self, packet: pb.SystemStatePacket) -> _Seeds:
        states = packet.seed_states
        n = len(states)
        layer_index, depth_index = self.host.layer_index, self.host.depth_index
        ids: list[str] = []
        blueprint_ids: list[str] = []
        stage = np.zeros(n, dtype=np.int64)
        layer = np.full(n, -1, dtype=np.int64)
        rows: list[list[float]] = []
        for i, seed in enumerate(states):
            ids.append(seed.seed_id)
            blueprint_ids.append(seed.blueprint_id)
            stage[i] = seed.stage
            found = layer_index.get(seed.layer_id)
            if found is None:
                found = depth_index.get(seed.layer_depth)
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
                    seed.layer_depth / self.host.deepest,
                    *(metrics.get(m, math.nan) for m in SEED_METRICS),
                ]
            )
        values = np.array(rows, dtype=np.float32).reshape(n, FEATURE_SPECS[SEED].num_values)
        stage[(stage < 0) | (stage >= NUM_STAGES)] = pb.SEED_STAGE_UNKNOWN
        raw = _finite(values)
        return _Seeds(tuple(ids), tuple(blueprint_ids), stage, layer, raw.values, raw.presence)

    def _layer_dynamic(
        self, seeds: _Seeds, active: np.ndarray, metrics: dict[str, float]
    ) -> FloatArray:
        """[L, 2] per-step layer columns: active seeds, gradient signal."""
        layers = len(self.host.layer_kinds)
        active_seeds = np.bincount(seeds.layer[active & (seeds.layer >= 0)], minlength=layers)
        norms = np.array(
            [
                metrics.get(average, metrics.get(latest, math.nan))
                for average, latest in self._layer_norm_keys
            ],
            dtype=np.float32,
        )
        signal = gradient_signal(norms, self._layer_parameters)
        return np.stack((active_seeds.astype(np.float32), signal), axis=1)

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
            gradient_surge(
                metrics.get("gradient_norm", math.nan), metrics.get("gradient_norm_ema", math.nan)
            ),
            *(metrics.get(m, math.nan) for m in GLOBAL_METRICS),
        ]
        return _finite(np.array([row], dtype=np.float32))

    def _with_metrics(
        self, node_type: str, metrics: dict[str, float], dynamic: FloatArray | None = None
    ) -> RawFeatures:
        """Static columns, then per-step counts (``dynamic``), then packet metrics."""
        static = self._static[node_type]
        n = static.shape[0]
        looked_up = np.array(
            [metrics.get(k, math.nan) for k in self._metric_keys[node_type]], dtype=np.float32
        ).reshape(n, -1)
        known = static if dynamic is None else np.concatenate((static, dynamic), axis=1)
        return _finite(np.concatenate((known, looked_up), axis=1))

    def _enrich(
        self, blueprint_ids: tuple[str, ...], metadata: Mapping[str, BlueprintMetadata]
    ) -> _Enrichment:
        """Metadata-derived arrays, recomputed only when the metadata changes."""
        key = (blueprint_ids, *(metadata.get(b) for b in blueprint_ids))
        if self._enrichment is not None and self._enrichment[0] == key:
            return self._enrichment[1]
        n, kinds = len(blueprint_ids), self.host.layer_kinds
        values = np.zeros((n, 4), dtype=np.float32)
        presence = np.zeros((n, 4), dtype=np.float32)
        compat = np.full((n, len(kinds)), 0.5, dtype=np.float32)
        eligible = np.zeros(n, dtype=np.bool_)
        unrestricted = np.ones(n, dtype=np.bool_)
        for i, blueprint_id in enumerate(blueprint_ids):
            meta = metadata.get(blueprint_id)
            if meta is None:
                continue
            values[i] = (meta.risk, meta.tier, _log1p(meta.parameter_count), meta.quarantined)
            presence[i] = 1.0
            compat[i] = [1.0 if meta.fits(kind) else 0.0 for kind in kinds]
            eligible[i] = not meta.quarantined and i < len(self.candidates)
            unrestricted[i] = not meta.compatible_layer_kinds
        raw = _finite(values, presence)
        enrichment = _Enrichment(raw.values, raw.presence, compat, eligible, unrestricted)
        self._enrichment = (key, enrichment)
        return enrichment

    def _structure(
        self, seed_layer: IntArray, seed_blueprint: IntArray, blueprint_ids: tuple[str, ...]
    ) -> GraphStructure:
        key = (seed_layer.tobytes(), seed_blueprint.tobytes(), blueprint_ids)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        structure = build_structure(self.host, seed_layer, seed_blueprint, blueprint_ids)
        self._cache[key] = structure
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.structure_builds += 1
        return structure
