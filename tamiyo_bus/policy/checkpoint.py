"""Policy checkpoints in safetensors: weights, normalisation statistics, identity.

safetensors holds tensors and a string map and executes nothing on load. The metadata
names the architecture id and the registry digest; loading refuses a checkpoint made
for another architecture or another input registry before it touches any weights,
with an error that names both sides.

A learner's checkpoint carries its own state beside the policy's in the same file:
tensors and metadata entries whose names start with ``training.`` (the optimiser's
moments, the training configuration). Loading a policy ignores them, so a training
checkpoint is also a policy checkpoint; :func:`training_state` reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.schema import NODE_TYPES

FORMAT = "tamiyo-policy-checkpoint/1"
_NORM = "normalizer."
TRAINING_PREFIX = "training."
_HEADER_LEN_BYTES = 8


class CheckpointMismatchError(ValueError):
    """The checkpoint was made for another architecture, registry or format."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    policy_id: str
    policy_version: int
    architecture_id: str
    registry_digest: str


@dataclass(frozen=True, slots=True)
class TrainingState:
    """What a learner keeps beside the policy (names without the ``training.`` prefix)."""

    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str]


def checkpoint_bytes(
    policy: ReferencePolicy,
    normalizer: NormalizerSnapshot,
    *,
    policy_id: str,
    policy_version: int,
    training: TrainingState | None = None,
) -> bytes:
    """Serialise weights, normaliser moments and identity (and a learner's ``training``
    state) as safetensors bytes."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in policy.state_dict().items()}
    for node_type in NODE_TYPES:
        for moment, values in (
            ("count", normalizer.count),
            ("mean", normalizer.mean),
            ("m2", normalizer.m2),
        ):
            tensors[f"{_NORM}{node_type}.{moment}"] = torch.from_numpy(values[node_type].copy())
    metadata = {
        "format": FORMAT,
        "policy_id": policy_id,
        "policy_version": str(policy_version),
        "architecture_id": architecture_id(policy),
        "registry_digest": registry_digest(),
    }
    if training is not None:
        tensors.update(
            (TRAINING_PREFIX + k, t.detach().cpu().contiguous())
            for k, t in training.tensors.items()
        )
        metadata.update((TRAINING_PREFIX + k, v) for k, v in training.metadata.items())
    return save_bytes(tensors, metadata=metadata)


def save_checkpoint(
    path: Path,
    policy: ReferencePolicy,
    normalizer: NormalizerSnapshot,
    *,
    policy_id: str,
    policy_version: int,
    training: TrainingState | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    data = checkpoint_bytes(
        policy, normalizer, policy_id=policy_id, policy_version=policy_version, training=training
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_info(path: Path) -> CheckpointInfo:
    """The checkpoint's identity, without loading any tensor."""
    with safe_open(str(path), framework="pt") as handle:
        return _info(handle.metadata() or {})


def load_checkpoint(
    path: Path, policy: ReferencePolicy
) -> tuple[CheckpointInfo, NormalizerSnapshot]:
    """Load ``path`` into ``policy`` (strict); refuse mismatches before loading."""
    return load_checkpoint_bytes(path.read_bytes(), policy)


def load_checkpoint_bytes(
    data: bytes, policy: ReferencePolicy
) -> tuple[CheckpointInfo, NormalizerSnapshot]:
    """As :func:`load_checkpoint`, from bytes (e.g. a PolicyUpdate payload)."""
    info = _info(_metadata(data))
    expected_arch = architecture_id(policy)
    if info.architecture_id != expected_arch:
        raise CheckpointMismatchError(
            f"checkpoint architecture {info.architecture_id!r} does not match this "
            f"policy's {expected_arch!r}"
        )
    if info.registry_digest != registry_digest():
        raise CheckpointMismatchError(
            f"checkpoint registry digest {info.registry_digest!r} does not match this "
            f"build's {registry_digest()!r}: its features or actions mean something else"
        )
    tensors = {k: v for k, v in load_bytes(data).items() if not k.startswith(TRAINING_PREFIX)}
    moments: dict[str, dict[str, np.ndarray]] = {"count": {}, "mean": {}, "m2": {}}
    for node_type in NODE_TYPES:
        for moment, table in moments.items():
            key = f"{_NORM}{node_type}.{moment}"
            if key not in tensors:
                raise CheckpointMismatchError(f"checkpoint lacks {key}")
            table[node_type] = tensors.pop(key).numpy().astype(np.float64)
    policy.load_state_dict(tensors, strict=True)
    snapshot = NormalizerSnapshot.from_moments(moments["count"], moments["mean"], moments["m2"])
    return info, snapshot


def training_state(data: bytes) -> TrainingState:
    """The learner's state a checkpoint carries, prefixes removed (empty if none)."""
    _info(_metadata(data))
    n = len(TRAINING_PREFIX)
    return TrainingState(
        {k[n:]: v for k, v in load_bytes(data).items() if k.startswith(TRAINING_PREFIX)},
        {k[n:]: v for k, v in _metadata(data).items() if k.startswith(TRAINING_PREFIX)},
    )


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata: 8-byte little-endian length, then JSON."""
    header_len = int.from_bytes(data[:_HEADER_LEN_BYTES], "little")
    try:
        header = json.loads(data[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + header_len])
        metadata = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise CheckpointMismatchError("not a safetensors file") from None
    return {str(k): str(v) for k, v in metadata.items()}


def _info(metadata: dict[str, str]) -> CheckpointInfo:
    if metadata.get("format") != FORMAT:
        raise CheckpointMismatchError(
            f"not a Tamiyo policy checkpoint (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return CheckpointInfo(
        policy_id=metadata.get("policy_id", ""),
        policy_version=int(metadata.get("policy_version", "0")),
        architecture_id=metadata.get("architecture_id", ""),
        registry_digest=metadata.get("registry_digest", ""),
    )
