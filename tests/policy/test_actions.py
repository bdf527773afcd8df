"""Action space: masks make invalid choices impossible; log-prob and entropy are exact;
the risk head's expected severity is not the arg-max confidence."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.actions import (
    ACTION_SPACE,
    BLEND_METHODS,
    NUM_ACTIONS,
    RISK_CLASSES,
    SEED_ACTIONS,
    SEED_COLUMN,
    ActionMasks,
    PolicyAction,
    PolicyOutput,
    compute_masks,
    entropy,
    log_prob,
    select_action,
)

S = pb.SeedLifecycleStage
GERMINATE = next(i for i, a in enumerate(ACTION_SPACE) if a.seed_operation == pb.SEED_OP_GERMINATE)
FOSSILIZE = next(i for i, a in enumerate(ACTION_SPACE) if a.seed_operation == pb.SEED_OP_FOSSILIZE)


def output(num_seeds: int, num_blueprints: int, seed: int = 0, scale: float = 1.0) -> PolicyOutput:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    return PolicyOutput(
        action_logits=r(NUM_ACTIONS),
        seed_logits=r(num_seeds, len(SEED_ACTIONS)),
        blueprint_logits=r(num_blueprints),
        blend_logits=r(len(BLEND_METHODS)),
        alpha_log_steps_mean=torch.tensor(4.0),
        lr_log_scale_mean=torch.tensor(0.1),
        log_std=torch.tensor([-1.0, -2.0]),
        value=torch.tensor(0.0),
        risk_logits=r(RISK_CLASSES),
    )


def masks(stages: Sequence[int], allowed: list[list[bool]]) -> ActionMasks:
    return compute_masks(np.array(stages, dtype=np.int64), np.array(allowed, dtype=np.bool_))


def test_no_free_slot_means_no_germination() -> None:
    m = masks([S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING], [[True, True], [True, True]])
    assert not m.action[GERMINATE]
    out = output(2, 2)
    out.action_logits[GERMINATE] = 1e6  # the policy wants it badly
    assert select_action(out, m).action != GERMINATE


def test_a_quarantined_blueprint_is_never_chosen() -> None:
    m = masks([S.SEED_STAGE_DORMANT], [[False, True, False]])  # only blueprint 1 allowed
    out = output(1, 3)
    out.action_logits[GERMINATE] = 1e6
    out.blueprint_logits[0] = 1e6
    out.blueprint_logits[2] = 1e6
    assert select_action(out, m) == PolicyAction(GERMINATE, seed=0, blueprint=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        choice = select_action(out, m, greedy=False, generator=g)
        assert choice.blueprint == 1


def test_sampling_only_targets_seeds_in_an_accepted_stage() -> None:
    stages = [S.SEED_STAGE_DORMANT, S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED]
    m = masks(stages, [[True], [True], [True]])
    out = output(3, 1, scale=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        choice = select_action(out, m, greedy=False, generator=g)
        spec = ACTION_SPACE[choice.action]
        assert m.action[choice.action]
        if spec.needs_seed:
            assert stages[choice.seed] in spec.seed_stages
    assert m.action[FOSSILIZE] and bool(m.seed[1, SEED_COLUMN[FOSSILIZE]])
    assert not bool(m.seed[2].any())  # a fossilised seed takes no seed action


def discrete_actions(m: ActionMasks) -> list[PolicyAction]:
    num_seeds, num_blueprints = m.blueprint.shape
    found = []
    for a, spec in enumerate(ACTION_SPACE):
        seeds = range(num_seeds) if spec.needs_seed else [-1]
        blueprints = range(num_blueprints) if spec.needs_blueprint else [-1]
        blends = range(len(BLEND_METHODS)) if spec.has_blend else [-1]
        for s, b, blend in itertools.product(seeds, blueprints, blends):
            found.append(PolicyAction(a, s, b, blend, alpha_log_steps=4.0, lr_log_scale=0.1))
    return found


def continuous_density_at_mean(out: PolicyOutput, action: PolicyAction) -> float:
    """log N(mean; mean, std) of the continuous components the action carries."""
    spec = action.spec
    total = 0.0
    for used, log_std in ((spec.has_blend, out.log_std[0]), (spec.has_lr, out.log_std[1])):
        if used:
            total += -float(log_std) - 0.5 * math.log(2 * math.pi)
    return total


def test_log_prob_is_a_distribution_and_entropy_is_exact() -> None:
    stages = [S.SEED_STAGE_DORMANT, S.SEED_STAGE_TRAINING, S.SEED_STAGE_DORMANT]
    m = masks(stages, [[True, False], [True, True], [False, True]])
    out = output(3, 2, seed=4)
    total = 0.0
    discrete_entropy = 0.0
    gaussian = 0.0
    for action in discrete_actions(m):
        lp = float(log_prob(out, m, action)) - continuous_density_at_mean(out, action)
        p = math.exp(lp)
        total += p
        if p > 0:
            discrete_entropy -= p * lp
            spec = action.spec
            for used, log_std in ((spec.has_blend, out.log_std[0]), (spec.has_lr, out.log_std[1])):
                if used:
                    gaussian += p * (0.5 * math.log(2 * math.pi * math.e) + float(log_std))
    assert math.isclose(total, 1.0, rel_tol=1e-5)
    assert math.isclose(float(entropy(out, m)), discrete_entropy + gaussian, rel_tol=1e-5)


def test_log_prob_of_a_masked_choice_is_minus_infinity() -> None:
    m = masks([S.SEED_STAGE_DORMANT], [[False, True]])
    out = output(1, 2)
    assert float(log_prob(out, m, PolicyAction(GERMINATE, seed=0, blueprint=0))) == -math.inf


def test_expected_severity_is_not_the_argmax_confidence() -> None:
    out = output(1, 1)
    confident_safe = _with_risk(out, torch.tensor([20.0, 0, 0, 0, 0]))  # sure: no risk
    assert float(confident_safe.expected_severity()) < 1e-6
    assert float(_with_risk(out, torch.tensor([0.0, 0, 0, 0, 20.0])).expected_severity()) > 0.999
    uniform = _with_risk(out, torch.zeros(RISK_CLASSES))
    assert math.isclose(float(uniform.expected_severity()), 0.5, rel_tol=1e-6)


def _fields(out: PolicyOutput) -> dict[str, torch.Tensor]:
    return {f: getattr(out, f) for f in PolicyOutput.__dataclass_fields__}


def _with_risk(out: PolicyOutput, logits: torch.Tensor) -> PolicyOutput:
    fields = _fields(out)
    fields["risk_logits"] = logits
    return PolicyOutput(**fields)


def test_continuous_choices_are_clamped_into_their_ranges() -> None:
    assert PolicyAction(0, alpha_log_steps=100.0).alpha_steps == 4096
    assert PolicyAction(0, alpha_log_steps=-100.0).alpha_steps == 8
    assert math.isclose(PolicyAction(0, lr_log_scale=5.0).lr_scale, 2.0)
    assert math.isclose(PolicyAction(0, lr_log_scale=-5.0).lr_scale, 0.5)
