"""The batched log-probability and entropy of the hierarchical masked action space: the
whole choice is the sum of its parts, both equal the single-graph functions of
policy.actions, and masked choices give no NaN gradients."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.hierarchical import ActionBatch, batch_entropy, batch_log_prob
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
GERMINATE = next(i for i, a in enumerate(ACTION_SPACE) if a.needs_blueprint)
START_BLENDING = next(i for i, a in enumerate(ACTION_SPACE) if a.has_blend)
OPTIMIZER = next(i for i, a in enumerate(ACTION_SPACE) if a.has_lr)
SEEDS, BLUEPRINTS, GRAPHS = 5, 4, 24


def outputs(graphs: int, seed: int = 0) -> PolicyOutput:
    """Random stacked head outputs that require gradients."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return PolicyOutput(
        action_logits=r(graphs, NUM_ACTIONS),
        seed_logits=r(graphs, SEEDS, len(SEED_ACTIONS)),
        blueprint_logits=r(graphs, BLUEPRINTS),
        blend_logits=r(graphs, len(BLEND_METHODS)),
        alpha_log_steps_mean=r(graphs),
        lr_log_scale_mean=r(graphs),
        log_std=torch.tensor([-1.0, -0.5], requires_grad=True),
        value=r(graphs),
        risk_logits=r(graphs, RISK_CLASSES),
    )


def single(out: PolicyOutput, i: int) -> PolicyOutput:
    """Graph ``i`` of stacked outputs (``log_std`` is shared)."""
    return PolicyOutput(
        **{
            f.name: getattr(out, f.name) if f.name == "log_std" else getattr(out, f.name)[i]
            for f in dataclasses.fields(out)
        }
    )


def _values(out: PolicyOutput) -> list[torch.Tensor]:
    return [getattr(out, f.name) for f in dataclasses.fields(out)]


def random_masks(graphs: int, seed: int = 0) -> list[ActionMasks]:
    """Lifecycle stages and blueprint eligibility drawn at random, including seeds with
    no eligible blueprint and graphs where no seed can germinate."""
    rng = np.random.default_rng(seed)
    stages = [s for s in pb.SeedLifecycleStage.values() if s != S.SEED_STAGE_UNKNOWN]
    return [
        compute_masks(
            rng.choice(stages, size=SEEDS).astype(np.int64),
            rng.random((SEEDS, BLUEPRINTS)) < (0.0 if i % 5 == 0 else 0.5),
        )
        for i in range(graphs)
    ]


def stacked(masks: list[ActionMasks]) -> ActionMasks:
    return ActionMasks(
        torch.stack([m.action for m in masks]),
        torch.stack([m.seed for m in masks]),
        torch.stack([m.blueprint for m in masks]),
    )


def test_the_whole_choice_is_the_sum_of_the_parts_chosen() -> None:
    out = outputs(1)
    o = single(out, 0)
    stages = [S.SEED_STAGE_TRAINING, S.SEED_STAGE_DORMANT, S.SEED_STAGE_DORMANT]
    stages += [S.SEED_STAGE_GERMINATED, S.SEED_STAGE_DORMANT]
    allowed = np.ones((SEEDS, BLUEPRINTS), np.bool_)
    allowed[2, [0, 3]] = False
    allowed[4] = False  # dormant, but nothing fits it: not a germination target
    masks = compute_masks(np.array(stages, np.int64), allowed)
    seed_mask = masks.seed[:, SEED_COLUMN[GERMINATE]]
    assert seed_mask.tolist() == [False, True, True, False, False]
    seed, blueprint = 2, 1
    choice = PolicyAction(GERMINATE, seed, blueprint)

    def part(logits: torch.Tensor, mask: torch.Tensor, index: int) -> float:
        valid = logits.detach().masked_fill(~mask, -math.inf)
        return float(torch.log_softmax(valid, dim=-1)[index])

    by_hand = (
        part(o.action_logits, masks.action, GERMINATE)
        + part(o.seed_logits[:, SEED_COLUMN[GERMINATE]], seed_mask, seed)
        + part(o.blueprint_logits, masks.blueprint[seed], blueprint)
    )
    batched = batch_log_prob(out, stacked([masks]), ActionBatch.of([choice])).detach()
    assert math.isclose(float(batched[0]), by_hand, rel_tol=1e-5)

    optimiser = PolicyAction(OPTIMIZER, lr_log_scale=0.3)
    std = math.exp(-0.5)
    gaussian = -0.5 * ((0.3 - float(o.lr_log_scale_mean.detach())) / std) ** 2 - math.log(std)
    gaussian -= 0.5 * math.log(2 * math.pi)
    expected = part(o.action_logits, masks.action, OPTIMIZER) + gaussian
    batched = batch_log_prob(out, stacked([masks]), ActionBatch.of([optimiser])).detach()
    assert math.isclose(float(batched[0]), expected, rel_tol=1e-5)


def test_batched_log_prob_and_entropy_equal_the_single_graph_functions() -> None:
    out, masks = outputs(GRAPHS), random_masks(GRAPHS)
    generator = torch.Generator().manual_seed(7)
    actions = []
    for i in range(GRAPHS):
        with torch.no_grad():
            actions.append(
                select_action(single(out, i), masks[i], greedy=False, generator=generator)
            )
    assert len({a.action for a in actions}) >= 5  # many action types, not one
    lp = batch_log_prob(out, stacked(masks), ActionBatch.of(actions)).detach()
    h = batch_entropy(out, stacked(masks)).detach()
    for i in range(GRAPHS):
        o = single(out, i)
        with torch.no_grad():
            single_lp, single_h = log_prob(o, masks[i], actions[i]), entropy(o, masks[i])
        assert math.isclose(float(lp[i]), float(single_lp), rel_tol=1e-5)
        assert math.isclose(float(h[i]), float(single_h), rel_tol=1e-5)


def test_masked_choices_give_finite_gradients() -> None:
    out, masks = outputs(GRAPHS), random_masks(GRAPHS)
    assert not bool(stacked(masks).seed.all())  # some choices are masked
    actions = [PolicyAction(0)] * GRAPHS
    total = batch_entropy(out, stacked(masks)).sum()
    total = total + batch_log_prob(out, stacked(masks), ActionBatch.of(actions)).sum()
    total.backward()
    for tensor in _values(out):
        if tensor.grad is not None:
            assert torch.isfinite(tensor.grad).all()
    assert out.seed_logits.grad is not None and out.seed_logits.grad.abs().sum() > 0


def test_a_graph_without_seeds_or_blueprints_has_a_defined_entropy() -> None:
    out = dataclasses.replace(
        outputs(1),
        seed_logits=torch.zeros(1, 0, len(SEED_ACTIONS)),
        blueprint_logits=torch.zeros(1, 0),
    )
    masks = compute_masks(np.zeros(0, np.int64), np.zeros((0, 0), np.bool_))
    with torch.no_grad():
        batched = batch_entropy(out, stacked([masks]))
        assert math.isclose(float(batched[0]), float(entropy(single(out, 0), masks)), rel_tol=1e-5)
