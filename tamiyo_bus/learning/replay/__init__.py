"""Prioritised replay of graph transitions: storage (bounded, preallocated rows and
shared topologies), sampler (sum-trees, stratified, importance weights) and writer
(insertion, rare-event flags, expiry), with code-free persistence."""

from tamiyo_bus.learning.replay.buffer import GraphReplay, ReplaySample, ReplaySettings
from tamiyo_bus.learning.replay.sampler import (
    PrioritizedSampler,
    ReplaySamplerSettings,
    beta_at,
    importance_weights,
)
from tamiyo_bus.learning.replay.storage import ReplayStorage, ReplayStorageSettings
from tamiyo_bus.learning.replay.writer import (
    Expired,
    GraphTransition,
    ReplayWriter,
    ReplayWriterSettings,
)

__all__ = [
    "Expired",
    "GraphReplay",
    "GraphTransition",
    "PrioritizedSampler",
    "ReplaySample",
    "ReplaySamplerSettings",
    "ReplaySettings",
    "ReplayStorage",
    "ReplayStorageSettings",
    "ReplayWriter",
    "ReplayWriterSettings",
    "beta_at",
    "importance_weights",
]
