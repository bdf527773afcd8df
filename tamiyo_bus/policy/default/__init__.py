"""The learned default policy shipped with the package: PPO trained on the simulator.

Two files beside this module: ``policy.safetensors``, a policy checkpoint
(``policy/checkpoint.py``: weights and the feature statistics it was trained with, no
optimiser state), and ``policy.json``, its card: the architecture id and registry
digest it was made for, the profile, the exact command, seed and git commit that
produced it, and the control bench's figures for it (``bench/control.py``).

A policy decides on normalised features, so the statistics travel with the weights:
a Tamiyo serving this policy loads them into its graph builder
(``build_tamiyo(normalizer=default.normalizer)``) and keeps them
(``NormalizerSettings(update=False)``) to decide as it was evaluated.

A change of the policy's inputs or dimensions changes the architecture id, and the
checkpoint is then refused (``DefaultPolicyOutdated`` names the command that
retrains it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from tamiyo_bus.policy.checkpoint import CheckpointMismatchError
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.policy.served import serve_checkpoint
from tamiyo_bus.security.policy_update import PolicyHolder

CHECKPOINT_FILE = "policy.safetensors"
CARD_FILE = "policy.json"


class DefaultPolicyOutdated(CheckpointMismatchError):
    """The shipped checkpoint was made for another architecture or input registry."""


@dataclass(frozen=True)
class DefaultPolicy:
    """What a Tamiyo needs to serve the shipped policy."""

    holder: PolicyHolder  # the policy at its card's id and version, on the device asked for
    normalizer: NormalizerSnapshot  # the feature statistics it was trained with
    card: Mapping[str, Any]  # policy.json


def default_policy_card() -> dict[str, Any]:
    """The shipped policy's card (policy.json)."""
    card: dict[str, Any] = json.loads(_files().joinpath(CARD_FILE).read_text(encoding="utf-8"))
    return card


def load_default_policy(device: torch.device | str = "cpu") -> DefaultPolicy:
    """The shipped policy on ``device``, with its normaliser snapshot and card; raises
    ``DefaultPolicyOutdated`` (with the command that retrains it) when the code's
    architecture or input registry no longer matches the checkpoint."""
    card = default_policy_card()
    data = _files().joinpath(CHECKPOINT_FILE).read_bytes()
    try:
        served = serve_checkpoint(data, device, Profile(card["profile"]))
    except CheckpointMismatchError as error:
        raise DefaultPolicyOutdated(
            f"the shipped default policy no longer fits this code ({error}); retrain and "
            f"ship it with: {card['command']}"
        ) from error
    return DefaultPolicy(served.holder, served.normalizer, card)


@functools.cache
def default_feature_statistics() -> NormalizerSnapshot:
    """The feature statistics the shipped policy was trained with (read once)."""
    return load_default_policy().normalizer


def default_policy_path() -> Path:
    """The shipped checkpoint's file (a learner that continues from it reads it)."""
    return Path(str(_files().joinpath(CHECKPOINT_FILE)))


def _files() -> Traversable:
    return resources.files(__name__)
