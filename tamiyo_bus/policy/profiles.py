"""The policy's named sizes, in one place.

``small`` is the default on a CPU: it decides in about 3 ms on a 2-core machine, so a
decision costs the trainer little and arrives in time to act. ``full`` is the default
when serving on CUDA, where its larger layers cost next to nothing. Both are the same
network and the same reference function; the architecture id names the dimensions, so
a checkpoint or a PolicyUpdate made for one profile is refused by the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import torch

from tamiyo_bus.policy.reference import PolicyConfig


class Profile(StrEnum):
    SMALL = "small"
    FULL = "full"


PROFILES: Mapping[Profile, PolicyConfig] = {
    Profile.SMALL: PolicyConfig(hidden_dim=128, gat_heads=4, gat_head_dim=16, head_hidden_dim=128),
    Profile.FULL: PolicyConfig(),
}


def default_profile(device: torch.device) -> Profile:
    """``full`` on CUDA, ``small`` elsewhere."""
    return Profile.FULL if device.type == "cuda" else Profile.SMALL
