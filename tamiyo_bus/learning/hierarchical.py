"""Log-probability and entropy of the hierarchical masked action space, for many graphs
at once.

These compute exactly what ``policy.actions.log_prob`` and ``policy.actions.entropy``
compute for one graph, for G graphs of one structure stacked along a leading axis, with
no Python loop over graphs or heads. Invalid choices are filled with a large finite
negative logit instead of -inf: their probability is still exactly 0 in float32, but
0 * log p stays 0 and no gradient becomes NaN (the -inf form gives NaN gradients to the
entropy bonus).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tamiyo_bus.policy.actions import (
    ACTION_SPACE,
    SEED_ACTIONS,
    SEED_COLUMN,
    ActionMasks,
    PolicyAction,
    PolicyOutput,
)

MASKED_LOGIT = -1e9
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def _flags(predicate: Sequence[bool]) -> Tensor:
    return torch.tensor(predicate, dtype=torch.bool)


_NEEDS_SEED = _flags([a.needs_seed for a in ACTION_SPACE])
_NEEDS_BLUEPRINT = _flags([a.needs_blueprint for a in ACTION_SPACE])
_HAS_BLEND = _flags([a.has_blend for a in ACTION_SPACE])
_HAS_LR = _flags([a.has_lr for a in ACTION_SPACE])
_SEED_COLUMN = torch.tensor([max(c, 0) for c in SEED_COLUMN])
_SEED_ACTION_INDEX = torch.tensor(SEED_ACTIONS)
# Seed-action columns whose action also chooses a blueprint, and those actions.
_GERMINATE_COLUMNS = torch.tensor([c for c, a in enumerate(SEED_ACTIONS) if _NEEDS_BLUEPRINT[a]])
_GERMINATE_ACTIONS = _SEED_ACTION_INDEX[_GERMINATE_COLUMNS]


@dataclass(frozen=True, slots=True)
class ActionBatch:
    """G complete choices as tensors; -1 marks a component the action type does not
    use (as in :class:`PolicyAction`)."""

    action: Tensor  # [G] int64
    seed: Tensor
    blueprint: Tensor
    blend: Tensor
    alpha_log_steps: Tensor  # [G] float32, the raw Gaussian draws
    lr_log_scale: Tensor

    @classmethod
    def of(cls, actions: Sequence[PolicyAction]) -> ActionBatch:
        def column(name: str, dtype: torch.dtype) -> Tensor:
            return torch.tensor([getattr(a, name) for a in actions], dtype=dtype)

        return cls(
            column("action", torch.int64),
            column("seed", torch.int64),
            column("blueprint", torch.int64),
            column("blend", torch.int64),
            column("alpha_log_steps", torch.float32),
            column("lr_log_scale", torch.float32),
        )

    def select(self, rows: Tensor) -> ActionBatch:
        return ActionBatch(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

    def to(self, device: torch.device) -> ActionBatch:
        return ActionBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def __len__(self) -> int:
        return int(self.action.shape[0])


def masked_log_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """log-softmax over the valid entries along ``dim``; a set with no valid entry is
    left unmasked (it only occurs under an action type of probability 0)."""
    valid = mask | ~mask.any(dim=dim, keepdim=True)
    return torch.log_softmax(logits.float().masked_fill(~valid, MASKED_LOGIT), dim=dim)


def categorical_entropy(log_probs: Tensor, dim: int) -> Tensor:
    return -(log_probs.exp() * log_probs).sum(dim=dim)


def _normal_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    return -0.5 * ((x - mean.float()) / log_std.exp()) ** 2 - log_std - _HALF_LOG_2PI


def _pick(log_probs: Tensor, index: Tensor) -> Tensor:
    """log_probs[g, index[g]], with unused (-1) indices read as 0 (masked out later)."""
    return log_probs.gather(-1, index.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def batch_log_prob(out: PolicyOutput, masks: ActionMasks, actions: ActionBatch) -> Tensor:
    """[G] log-probability of each whole choice: the sum of the parts it chose."""
    a = actions.action
    device = a.device
    zero = torch.zeros((), dtype=torch.float32, device=device)
    total = _pick(masked_log_softmax(out.action_logits, masks.action, -1), a)
    seed_logits = out.seed_logits
    num_seeds, num_blueprints = masks.blueprint.shape[-2:]
    if num_seeds > 0:
        column = _SEED_COLUMN.to(device)[a][:, None, None].expand(-1, num_seeds, 1)
        chosen_logits = seed_logits.gather(2, column).squeeze(2)
        chosen_mask = masks.seed.gather(2, column).squeeze(2)
        seed = _pick(masked_log_softmax(chosen_logits, chosen_mask, -1), actions.seed)
        total = total + torch.where(_NEEDS_SEED.to(device)[a], seed, zero)
        if num_blueprints > 0:
            rows = torch.arange(len(a), device=device)
            allowed = masks.blueprint[rows, actions.seed.clamp(min=0)]
            blueprint = _pick(
                masked_log_softmax(out.blueprint_logits, allowed, -1), actions.blueprint
            )
            total = total + torch.where(_NEEDS_BLUEPRINT.to(device)[a], blueprint, zero)
    log_std = out.log_std.float()
    blend = _pick(torch.log_softmax(out.blend_logits.float(), dim=-1), actions.blend)
    blend = blend + _normal_log_prob(actions.alpha_log_steps, out.alpha_log_steps_mean, log_std[0])
    total = total + torch.where(_HAS_BLEND.to(device)[a], blend, zero)
    lr = _normal_log_prob(actions.lr_log_scale, out.lr_log_scale_mean, log_std[1])
    result: Tensor = total + torch.where(_HAS_LR.to(device)[a], lr, zero)
    return result


def batch_entropy(out: PolicyOutput, masks: ActionMasks) -> Tensor:
    """[G] exact entropy of each graph's whole hierarchical distribution:
    H(type) + sum_a p(a) H(rest | a), as ``policy.actions.entropy``."""
    action_log_probs = masked_log_softmax(out.action_logits, masks.action, -1)
    action_probs = action_log_probs.exp()
    groups, device = action_probs.shape[0], action_probs.device
    conditional = torch.zeros_like(action_probs)
    num_seeds, num_blueprints = masks.blueprint.shape[-2:]
    if num_seeds > 0:
        seed_log_probs = masked_log_softmax(out.seed_logits, masks.seed, 1)  # over seeds
        per_column = categorical_entropy(seed_log_probs, 1)  # [G, seed actions]
        conditional = conditional.index_add(1, _SEED_ACTION_INDEX.to(device), per_column)
        if num_blueprints > 0:
            logits = out.blueprint_logits[:, None, :].expand(-1, num_seeds, -1)
            per_seed = categorical_entropy(masked_log_softmax(logits, masks.blueprint, 2), 2)
            germinate = _GERMINATE_COLUMNS.to(device)
            seed_probs = seed_log_probs[:, :, germinate].exp()  # [G, S, germinate columns]
            expected = (seed_probs * per_seed[:, :, None]).sum(dim=1)
            conditional = conditional.index_add(1, _GERMINATE_ACTIONS.to(device), expected)
    gaussian = _HALF_LOG_2PI_E + out.log_std.float()
    blend = categorical_entropy(torch.log_softmax(out.blend_logits.float(), dim=-1), -1)
    conditional = conditional + torch.where(
        _HAS_BLEND.to(device), (blend + gaussian[0])[:, None], 0.0
    )
    conditional = conditional + torch.where(_HAS_LR.to(device), gaussian[1], 0.0).expand(groups, -1)
    expected_rest = (action_probs * conditional).sum(dim=-1)
    result: Tensor = categorical_entropy(action_log_probs, -1) + expected_rest
    return result
