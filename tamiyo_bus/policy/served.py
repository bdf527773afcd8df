"""A policy checkpoint as Tamiyo serves it: the weights in a ServingPolicy of the
profile the checkpoint was made for, at the checkpoint's id and version, and the
feature statistics it was trained with (a Tamiyo serving it loads them into her graph
builder: ``build_tamiyo(normalizer=...)``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tamiyo_bus.policy.checkpoint import CheckpointMismatchError, load_checkpoint_bytes
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy


@dataclass(frozen=True)
class ServedCheckpoint:
    holder: PolicyHolder
    normalizer: NormalizerSnapshot
    profile: Profile


def serve_checkpoint(
    data: bytes, device: torch.device | str, profile: Profile | None = None
) -> ServedCheckpoint:
    """``data`` (a checkpoint's bytes) on ``device``; without ``profile``, the profile
    whose architecture the checkpoint names. CheckpointMismatchError when no profile
    fits, or when the checkpoint's inputs mean something else in this build."""
    mismatches = []
    for candidate in [profile] if profile is not None else list(Profile):
        policy = ServingPolicy(PROFILES[candidate], device=device)
        try:
            info, normalizer = load_checkpoint_bytes(data, policy)
        except CheckpointMismatchError as error:
            mismatches.append(str(error))
            continue
        running = RunningPolicy(
            policy, info.policy_id, info.policy_version, info.architecture_id, info.registry_digest
        )
        return ServedCheckpoint(PolicyHolder(running), normalizer, candidate)
    raise CheckpointMismatchError("; ".join(mismatches))
