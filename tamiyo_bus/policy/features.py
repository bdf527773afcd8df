"""Node feature layout, presence masks, coverage and running normalisation.

Each node type has continuous *value* columns (normalised with running statistics, each
paired with a 0/1 presence column so "missing" never reads as "zero") and categorical
one-hot blocks. The statistics are updated on a background thread from observations
the step path hands over through a bounded queue, so the step path only ever reads an
immutable snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.schema import (
    ACTIVATION,
    BLUEPRINT,
    GLOBAL,
    LAYER,
    NODE_TYPES,
    PARAMETER,
    SEED,
)
from tamiyo_bus.worker import DropRule, QueueWorker

FloatArray = npt.NDArray[np.float32]

MIN_VARIANCE = 1e-4  # floor under the running variance of a value column
CLIP = 10.0  # normalised values are clipped to [-CLIP, CLIP]
HASH_BUCKETS = 16  # width of every hashed categorical one-hot block
NUM_STAGES = len(pb.SeedLifecycleStage.values())

GLOBAL_METRICS: tuple[str, ...] = (
    "gradient_norm",
    "gradient_norm_ema",
    "gradient_variance",
    "samples_per_s",
    "hook_latency_ms",
    "step_latency_ms",
    "device_memory_fraction",
    "host_memory_fraction",
)
SEED_METRICS: tuple[str, ...] = (
    "loss_delta",
    "gradient_variance",
    "isolation_violations",
    "update_ratio",
)
# Per-node metrics arrive in SystemStatePacket.training_metrics under
# "<node type>/<node id>/<metric>", e.g. "layer/layer3/gradient_norm".
LAYER_METRICS: tuple[str, ...] = ("gradient_norm", "activation_norm", "gradient_norm_ema")
ACTIVATION_METRICS: tuple[str, ...] = ("mean", "std", "dead_fraction")
PARAMETER_METRICS: tuple[str, ...] = ("gradient_norm", "weight_norm")


@dataclass(frozen=True, slots=True)
class NodeFeatureSpec:
    """Column layout of one node type: [values | presence | categorical blocks]."""

    node_type: str
    values: tuple[str, ...]
    categorical: tuple[tuple[str, int], ...]

    @property
    def num_values(self) -> int:
        return len(self.values)

    @property
    def width(self) -> int:
        return 2 * len(self.values) + sum(w for _, w in self.categorical)

    def categorical_offset(self, name: str) -> int:
        """Column of the first one-hot entry of block ``name`` within this type's layout."""
        offset = 2 * len(self.values)
        for block, block_width in self.categorical:
            if block == name:
                return offset
            offset += block_width
        raise KeyError(name)


FEATURE_SPECS: dict[str, NodeFeatureSpec] = {
    GLOBAL: NodeFeatureSpec(
        GLOBAL,
        (
            "training_loss",
            "validation_loss",
            "validation_accuracy",
            "log_epoch",
            "log_global_step",
            "seed_count",
            "active_seed_fraction",
            "gradient_surge",  # derived: policy/signals.py
            *GLOBAL_METRICS,
        ),
        (),
    ),
    SEED: NodeFeatureSpec(
        SEED,
        (
            "alpha",
            "log_gradient_norm",
            "log10_learning_rate",
            "log_age",
            "risk_score",
            "depth_fraction",
            *SEED_METRICS,
        ),
        (("stage", NUM_STAGES), ("has_blueprint", 1)),
    ),
    LAYER: NodeFeatureSpec(
        LAYER,
        (
            "depth_fraction",
            "log_parameter_count",
            "fan_in",
            "fan_out",
            "active_seeds",
            "gradient_signal",  # derived: policy/signals.py
            *LAYER_METRICS,
        ),
        (("layer_kind", HASH_BUCKETS),),
    ),
    BLUEPRINT: NodeFeatureSpec(
        BLUEPRINT,
        ("risk", "tier", "log_parameter_count", "quarantined", "seeds_using"),
        (("blueprint_id", HASH_BUCKETS),),
    ),
    ACTIVATION: NodeFeatureSpec(
        ACTIVATION, ACTIVATION_METRICS, (("activation_kind", HASH_BUCKETS),)
    ),
    PARAMETER: NodeFeatureSpec(
        PARAMETER, ("log_numel", *PARAMETER_METRICS), (("parameter_kind", HASH_BUCKETS),)
    ),
}


def block_offsets() -> dict[str, int]:
    """Column where each node type's features start in the stacked encoder input.

    The encoder input is block-diagonal: type t's features sit in its own column block
    and a final one-hot "type" column per node type carries the encoder bias, so every
    typed encoder runs as one matmul.
    """
    offsets: dict[str, int] = {}
    column = 0
    for node_type in NODE_TYPES:
        offsets[node_type] = column
        column += FEATURE_SPECS[node_type].width
    return offsets


BLOCK_OFFSETS = block_offsets()
TYPE_COLUMN_OFFSET = sum(FEATURE_SPECS[t].width for t in NODE_TYPES)
ENCODER_INPUT_WIDTH = TYPE_COLUMN_OFFSET + len(NODE_TYPES)


@dataclass(frozen=True, slots=True)
class RawFeatures:
    """Un-normalised values and their presence for one node type (rows: nodes)."""

    values: FloatArray
    presence: FloatArray

    def coverage(self) -> float:
        """Fraction of value cells present; 1.0 for a type with no nodes."""
        return float(self.presence.mean()) if self.presence.size else 1.0


@dataclass(frozen=True, slots=True)
class NormalizerSnapshot:
    """Immutable running statistics per node type, read by the step path."""

    count: Mapping[str, npt.NDArray[np.float64]]
    mean: Mapping[str, npt.NDArray[np.float64]]
    m2: Mapping[str, npt.NDArray[np.float64]]
    shift: Mapping[str, FloatArray]
    scale: Mapping[str, FloatArray]

    @classmethod
    def initial(cls) -> NormalizerSnapshot:
        """Identity normalisation: nothing observed yet."""
        zeros = {t: np.zeros(FEATURE_SPECS[t].num_values) for t in NODE_TYPES}
        return cls.from_moments(zeros, dict(zeros), dict(zeros))

    @classmethod
    def from_moments(
        cls,
        count: Mapping[str, npt.NDArray[np.float64]],
        mean: Mapping[str, npt.NDArray[np.float64]],
        m2: Mapping[str, npt.NDArray[np.float64]],
    ) -> NormalizerSnapshot:
        shift: dict[str, FloatArray] = {}
        scale: dict[str, FloatArray] = {}
        for t in NODE_TYPES:
            n = count[t]
            var = np.where(n > 1, m2[t] / np.maximum(n - 1, 1), 1.0)
            shift[t] = mean[t].astype(np.float32)
            scale[t] = (1.0 / np.sqrt(np.maximum(var, MIN_VARIANCE))).astype(np.float32)
        return cls(dict(count), dict(mean), dict(m2), shift, scale)

    def normalize(self, node_type: str, raw: RawFeatures) -> FloatArray:
        """Standardise present values, clip outliers, and zero the absent ones."""
        z = (raw.values - self.shift[node_type]) * self.scale[node_type]
        np.clip(z, -CLIP, CLIP, out=z)
        z *= raw.presence
        return z

    def merged(self, batch: Mapping[str, list[RawFeatures]]) -> NormalizerSnapshot:
        """Chan/Welford parallel merge of a batch of observations into new statistics."""
        count = dict(self.count)
        mean = dict(self.mean)
        m2 = dict(self.m2)
        for node_type, observations in batch.items():
            if not observations:
                continue
            values = np.concatenate([o.values for o in observations]).astype(np.float64)
            presence = np.concatenate([o.presence for o in observations]).astype(np.float64)
            n_b = presence.sum(axis=0)
            if not n_b.any():
                continue
            safe_n = np.maximum(n_b, 1.0)
            mean_b = (values * presence).sum(axis=0) / safe_n
            m2_b = (presence * (values - mean_b) ** 2).sum(axis=0)
            n_a = count[node_type]
            n = n_a + n_b
            delta = mean_b - mean[node_type]
            ratio = np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)
            mean[node_type] = mean[node_type] + delta * ratio
            m2[node_type] = m2[node_type] + m2_b + delta**2 * n_a * ratio
            count[node_type] = n
        return NormalizerSnapshot.from_moments(count, mean, m2)


@dataclass(frozen=True, slots=True)
class NormalizerSettings:
    update: bool = True  # update the running feature statistics from live steps
    queue_size: int = 256  # observations waiting for the updater; more are dropped (counted)


class RunningNormalizer:
    """Running feature statistics, updated on a background worker (``start`` it).

    ``observe`` never blocks: a full queue drops the new observation and counts it. The
    worker merges whatever is queued in one batch, so it holds the interpreter in short
    bursts and never starves the step path's worker.
    """

    def __init__(
        self, *, update: bool = True, queue_size: int = 256, linger_ms: float = 0.0
    ) -> None:
        self._snapshot = NormalizerSnapshot.initial()
        self._update = update
        self.worker: QueueWorker[dict[str, RawFeatures]] = QueueWorker(
            "tamiyo-normalizer",
            capacity=queue_size,
            drop=DropRule.DROP_NEWEST,
            handle_batch=self._merge,
            linger_ms=linger_ms,
        )

    def start(self) -> None:
        if self._update:
            self.worker.start()

    def close(self) -> bool:
        return self.worker.close()

    @property
    def snapshot(self) -> NormalizerSnapshot:
        return self._snapshot

    def load(self, snapshot: NormalizerSnapshot) -> None:
        """Replace the statistics (e.g. from a checkpoint)."""
        self._snapshot = snapshot

    def observe(self, raw: dict[str, RawFeatures]) -> None:
        """Hand one step's raw features to the background updater, never blocking."""
        if self._update:
            self.worker.submit(raw)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued observation is merged; False on timeout."""
        return self.worker.wait_idle(timeout_s)

    def _merge(self, items: Sequence[dict[str, RawFeatures]]) -> None:
        batch: dict[str, list[RawFeatures]] = {t: [] for t in NODE_TYPES}
        for item in items:
            for node_type, raw in item.items():
                batch[node_type].append(raw)
        self._snapshot = self._snapshot.merged(batch)
