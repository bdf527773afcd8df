"""Tamiyo's action space: what the policy may choose, masks, selection, log-prob, entropy.

A decision is hierarchical: an action type; for seed actions a target seed; for a
germination a blueprint; for the start of blending a blend method and an alpha ramp
length; for an optimiser action a learning-rate scale. Masks make invalid choices
impossible (no free slot, wrong lifecycle stage, quarantined or unknown blueprint)
rather than merely unlikely.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from leyline_pb import leyline_pb2 as pb


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action type: the command it becomes and what else must be chosen with it."""

    command_type: pb.CommandType.ValueType
    seed_operation: pb.SeedOperation.ValueType = pb.SEED_OP_UNKNOWN
    seed_stages: frozenset[int] = frozenset()  # stages a target seed may be in
    needs_blueprint: bool = False
    has_blend: bool = False
    has_lr: bool = False
    breaker_action: pb.BreakerAction.ValueType = pb.BREAKER_ACTION_UNKNOWN

    @property
    def needs_seed(self) -> bool:
        return bool(self.seed_stages)

    @property
    def name(self) -> str:
        """Derived from the generated enums, so it can never drift from Leyline."""
        parts = [pb.CommandType.Name(self.command_type)]
        if self.seed_operation != pb.SEED_OP_UNKNOWN:
            parts.append(pb.SeedOperation.Name(self.seed_operation))
        if self.breaker_action != pb.BREAKER_ACTION_UNKNOWN:
            parts.append(pb.BreakerAction.Name(self.breaker_action))
        return "/".join(parts)


_ACTIVE = frozenset(
    {
        pb.SEED_STAGE_GERMINATED,
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
    }
)

ACTION_SPACE: tuple[ActionSpec, ...] = (
    ActionSpec(pb.COMMAND_TYPE_NO_OP),
    ActionSpec(
        pb.COMMAND_TYPE_SEED,
        pb.SEED_OP_GERMINATE,
        frozenset({pb.SEED_STAGE_DORMANT}),
        needs_blueprint=True,
    ),
    ActionSpec(
        pb.COMMAND_TYPE_SEED, pb.SEED_OP_START_TRAINING, frozenset({pb.SEED_STAGE_GERMINATED})
    ),
    ActionSpec(
        pb.COMMAND_TYPE_SEED,
        pb.SEED_OP_START_BLENDING,
        frozenset({pb.SEED_STAGE_TRAINING}),
        has_blend=True,
    ),
    ActionSpec(
        pb.COMMAND_TYPE_SEED,
        pb.SEED_OP_ADVANCE,
        frozenset({pb.SEED_STAGE_BLENDING, pb.SEED_STAGE_SHADOWING}),
    ),
    ActionSpec(pb.COMMAND_TYPE_SEED, pb.SEED_OP_CULL, _ACTIVE),
    ActionSpec(pb.COMMAND_TYPE_SEED, pb.SEED_OP_FOSSILIZE, frozenset({pb.SEED_STAGE_PROBATIONARY})),
    ActionSpec(pb.COMMAND_TYPE_OPTIMIZER, has_lr=True),
    ActionSpec(pb.COMMAND_TYPE_PAUSE),
    ActionSpec(
        pb.COMMAND_TYPE_CIRCUIT_BREAKER,
        breaker_action=pb.BREAKER_ACTION_ENTER_CONSERVATIVE,
    ),
)
NUM_ACTIONS = len(ACTION_SPACE)
NO_OP_ACTION = 0
SEED_ACTIONS: tuple[int, ...] = tuple(i for i, a in enumerate(ACTION_SPACE) if a.needs_seed)
# Column of each seed action in the per-seed logits (-1 for actions without a seed).
SEED_COLUMN: tuple[int, ...] = tuple(
    SEED_ACTIONS.index(i) if i in SEED_ACTIONS else -1 for i in range(NUM_ACTIONS)
)
BLEND_METHODS: tuple[pb.BlendMethod.ValueType, ...] = (
    pb.BLEND_METHOD_LINEAR,
    pb.BLEND_METHOD_COSINE,
    pb.BLEND_METHOD_WARMUP_HOLD,
)
RISK_CLASSES = 5  # severity 0 (none) .. 4 (critical)
ALPHA_STEPS_MIN = 8
ALPHA_STEPS_MAX = 4096
LOG_ALPHA_MIN = math.log(ALPHA_STEPS_MIN)
LOG_ALPHA_MAX = math.log(ALPHA_STEPS_MAX)
LR_LOG_SCALE_MAX = math.log(2.0)  # one decision changes the learning rate by at most 2x
_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


@dataclass(frozen=True, slots=True)
class ActionMasks:
    """Which choices are valid.

    action: [A]; seed: [S, len(SEED_ACTIONS)]; blueprint: [S, B], the blueprints that
    may be germinated on each seed's layer (known, not quarantined, compatible).
    """

    action: Tensor
    seed: Tensor
    blueprint: Tensor


_NUM_STAGES = len(pb.SeedLifecycleStage.values())
# [stage, seed action column]: may a seed in this stage be the target of the action?
_STAGE_TABLE = np.array(
    [[stage in ACTION_SPACE[a].seed_stages for a in SEED_ACTIONS] for stage in range(_NUM_STAGES)],
    dtype=np.bool_,
)
_GERMINATE_COLUMNS = np.array([ACTION_SPACE[a].needs_blueprint for a in SEED_ACTIONS])
_SEED_ACTION_INDEX = np.array(SEED_ACTIONS)


def compute_masks(
    stages: npt.NDArray[np.int64], blueprint_allowed: npt.NDArray[np.bool_]
) -> ActionMasks:
    """Masks from the seeds' lifecycle stages and the per-seed blueprint eligibility."""
    known = np.where((stages >= 0) & (stages < _NUM_STAGES), stages, pb.SEED_STAGE_UNKNOWN)
    seed: npt.NDArray[np.bool_] = _STAGE_TABLE[known]
    seed[:, _GERMINATE_COLUMNS] &= np.asarray(blueprint_allowed.any(axis=1))[:, None]
    action = np.ones(NUM_ACTIONS, dtype=np.bool_)
    action[_SEED_ACTION_INDEX] = seed.any(axis=0)
    return ActionMasks(
        torch.from_numpy(action),
        torch.from_numpy(seed),
        torch.from_numpy(np.ascontiguousarray(blueprint_allowed, dtype=np.bool_)),
    )


@dataclass(frozen=True, slots=True)
class PolicyOutput:
    """Raw head outputs for one graph."""

    action_logits: Tensor  # [A]
    seed_logits: Tensor  # [S, len(SEED_ACTIONS)]
    blueprint_logits: Tensor  # [B]
    blend_logits: Tensor  # [len(BLEND_METHODS)]
    alpha_log_steps_mean: Tensor  # [] log of the alpha ramp length
    lr_log_scale_mean: Tensor  # [] log of the learning-rate scale
    log_std: Tensor  # [2] for (alpha ramp, lr scale)
    value: Tensor  # []
    risk_logits: Tensor  # [RISK_CLASSES]

    def to(self, device: torch.device | str) -> PolicyOutput:
        """The same outputs on ``device`` (masks and sampling live on the CPU)."""
        return PolicyOutput(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def risk_probs(self) -> Tensor:
        return torch.softmax(self.risk_logits, dim=-1)

    def expected_severity(self) -> Tensor:
        """Expected risk severity in [0, 1]: sum_k p_k * k / (K - 1).

        The risk engine gates on this, never on the confidence of the arg-max class: a
        confident "no risk" must read as low risk, not as high certainty.
        """
        levels = torch.arange(RISK_CLASSES, dtype=self.risk_logits.dtype)
        return (self.risk_probs() * levels).sum() / (RISK_CLASSES - 1)


@dataclass(frozen=True, slots=True)
class PolicyAction:
    """One complete choice; -1 marks a component the action type does not use.

    The continuous components hold the raw (unclamped) Gaussian draws, so that
    ``log_prob`` of this action is exact; ``alpha_steps`` and ``lr_scale`` are the
    clamped values a command carries.
    """

    action: int
    seed: int = -1
    blueprint: int = -1
    blend: int = -1
    alpha_log_steps: float = 0.0
    lr_log_scale: float = 0.0

    @property
    def spec(self) -> ActionSpec:
        return ACTION_SPACE[self.action]

    @property
    def alpha_steps(self) -> int:
        clamped = min(max(self.alpha_log_steps, LOG_ALPHA_MIN), LOG_ALPHA_MAX)
        return round(math.exp(clamped))

    @property
    def lr_scale(self) -> float:
        return math.exp(min(max(self.lr_log_scale, -LR_LOG_SCALE_MAX), LR_LOG_SCALE_MAX))


def _masked(logits: Tensor, mask: Tensor) -> Tensor:
    """Logits with invalid entries at -inf; an all-invalid set is left unmasked.

    An all-invalid set only occurs for an action type that is itself masked out, so its
    probability is exactly zero and the choice below it never matters; leaving it
    unmasked keeps the arithmetic free of NaN.
    """
    safe = mask | ~mask.any(dim=0, keepdim=True)
    return logits.masked_fill(~safe, float("-inf"))


def _choose(logits: Tensor, greedy: bool, generator: torch.Generator | None) -> int:
    if greedy:
        return int(logits.argmax())
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


def select_action(
    out: PolicyOutput,
    masks: ActionMasks,
    *,
    greedy: bool = True,
    generator: torch.Generator | None = None,
) -> PolicyAction:
    """Greedy (arg-max / mean) or sampled choice; invalid choices have probability 0."""
    action = _choose(_masked(out.action_logits, masks.action), greedy, generator)
    spec = ACTION_SPACE[action]
    seed = blueprint = blend = -1
    alpha = lr = 0.0
    if spec.needs_seed:
        column = SEED_COLUMN[action]
        seed = _choose(
            _masked(out.seed_logits[:, column], masks.seed[:, column]), greedy, generator
        )
    if spec.needs_blueprint:
        allowed = masks.blueprint[seed]
        blueprint = _choose(_masked(out.blueprint_logits, allowed), greedy, generator)
    std = out.log_std.exp()
    if spec.has_blend:
        blend = _choose(out.blend_logits, greedy, generator)
        alpha = float(out.alpha_log_steps_mean)
        if not greedy:
            alpha += float(std[0]) * float(torch.randn((), generator=generator))
    if spec.has_lr:
        lr = float(out.lr_log_scale_mean)
        if not greedy:
            lr += float(std[1]) * float(torch.randn((), generator=generator))
    return PolicyAction(action, seed, blueprint, blend, alpha, lr)


def _normal_log_prob(x: float, mean: Tensor, log_std: Tensor) -> Tensor:
    return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2.0 * math.pi)


def log_prob(out: PolicyOutput, masks: ActionMasks, action: PolicyAction) -> Tensor:
    """Log-probability of ``action`` under the masked policy (differentiable)."""
    spec = action.spec
    total = torch.log_softmax(_masked(out.action_logits, masks.action), dim=-1)[action.action]
    if spec.needs_seed:
        column = SEED_COLUMN[action.action]
        seed_logits = _masked(out.seed_logits[:, column], masks.seed[:, column])
        total = total + torch.log_softmax(seed_logits, dim=-1)[action.seed]
    if spec.needs_blueprint:
        blueprint_logits = _masked(out.blueprint_logits, masks.blueprint[action.seed])
        total = total + torch.log_softmax(blueprint_logits, dim=-1)[action.blueprint]
    if spec.has_blend:
        total = total + torch.log_softmax(out.blend_logits, dim=-1)[action.blend]
        total = total + _normal_log_prob(
            action.alpha_log_steps, out.alpha_log_steps_mean, out.log_std[0]
        )
    if spec.has_lr:
        total = total + _normal_log_prob(action.lr_log_scale, out.lr_log_scale_mean, out.log_std[1])
    return total


def _categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy along the first dimension (per column for a 2-D input)."""
    result: Tensor = torch.special.entr(torch.softmax(logits, dim=0)).sum(dim=0)
    return result


def entropy(out: PolicyOutput, masks: ActionMasks) -> Tensor:
    """Exact entropy of the whole hierarchical distribution (differentiable).

    H = H(type) + sum_a p(a) * (H(seed | a) + [germinate] sum_s p(s | a) H(blueprint | s)
        + [start blending] (H(blend) + H(alpha)) + [optimiser] H(lr)).
    """
    action_probs = torch.softmax(_masked(out.action_logits, masks.action), dim=-1)
    gaussian = _HALF_LOG_2PI_E + out.log_std
    num_seeds, num_blueprints = masks.blueprint.shape
    conditional = []
    for index, spec in enumerate(ACTION_SPACE):
        extra = torch.zeros((), dtype=action_probs.dtype)
        if spec.needs_seed and num_seeds > 0:
            column = SEED_COLUMN[index]
            seed_logits = _masked(out.seed_logits[:, column], masks.seed[:, column])
            extra = extra + _categorical_entropy(seed_logits)
            if spec.needs_blueprint and num_blueprints > 0:
                per_seed = _categorical_entropy(
                    _masked(out.blueprint_logits.expand(num_seeds, -1).T, masks.blueprint.T)
                )
                extra = extra + (torch.softmax(seed_logits, dim=0) * per_seed).sum()
        if spec.has_blend:
            extra = extra + _categorical_entropy(out.blend_logits) + gaussian[0]
        if spec.has_lr:
            extra = extra + gaussian[1]
        conditional.append(extra)
    total: Tensor = torch.special.entr(action_probs).sum()
    return total + (action_probs * torch.stack(conditional)).sum()
