"""Prioritised replay of graph transitions: storage (bounded, preallocated rows and
shared topologies), sampler (sum-trees, stratified, importance weights) and writer
(insertion, rare-event flags, expiry), with code-free persistence."""

from tamiyo_bus.learning.replay.buffer import GraphReplay, ReplaySample, ReplaySettings
from tamiyo_bus.learning.replay.sampler import (
    PrioritizedSampler,
    SamplerSettings,
    beta_at,
    importance_weights,
)
from tamiyo_bus.learning.replay.storage import ReplayStorage, StorageSettings
from tamiyo_bus.learning.replay.writer import (
    Expired,
    GraphTransition,
    ReplayWriter,
    WriterSettings,
)

__all__ = [
    "Expired",
    "GraphReplay",
    "GraphTransition",
    "PrioritizedSampler",
    "ReplaySample",
    "ReplaySettings",
    "ReplayStorage",
    "ReplayWriter",
    "SamplerSettings",
    "StorageSettings",
    "WriterSettings",
    "beta_at",
    "importance_weights",
]
