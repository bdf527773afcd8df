"""The baselines: the random policy's choices and log-probabilities, the heuristic's
germination, and the ordering heuristic > random, heuristic > no-op by clear margins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.actions import (
    ACTION_SPACE,
    BLEND_METHODS,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    LR_LOG_SCALE_MAX,
    SEED_COLUMN,
)
from tamiyo_bus.policy.baselines import NoOpPolicy, RandomPolicy
from tamiyo_bus.policy.heuristic import HeuristicPolicy
from tamiyo_bus.policy.serving import DecisionPolicy
from tamiyo_bus.sim import VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tests.sim.helpers import QUIET, germinate, seed_command

RUNS = 6


def _returns(policies: list[DecisionPolicy], seed: int) -> np.ndarray:
    sim = VectorSim(runs=len(policies), seed=seed)
    episodes = run_episode(
        sim, policies, graph_builder(sim), generator=torch.Generator().manual_seed(seed)
    )
    return np.array([e.episode_return for e in episodes])


def test_the_heuristic_beats_random_and_no_op_by_a_clear_margin() -> None:
    heuristic = _returns([HeuristicPolicy() for _ in range(RUNS)], seed=21)
    no_op = _returns([NoOpPolicy()] * RUNS, seed=21)
    random = _returns([RandomPolicy()] * RUNS, seed=21)
    assert heuristic.mean() > no_op.mean() + 0.2
    assert heuristic.mean() > random.mean() + 0.5
    assert (heuristic > no_op).sum() >= RUNS - 1  # the same runs: paired
    assert (heuristic > random).sum() >= RUNS - 1


def test_random_choices_respect_the_masks_and_their_log_probabilities_add_up() -> None:
    sim = VectorSim(QUIET, seed=3)
    sim.reset()
    for command in (
        germinate("layer3.s0", "mlp-res-16"),
        germinate("layer0.s0", "conv-res-8"),
        seed_command("layer3.s0", pb.SEED_OP_START_TRAINING),
    ):
        sim.step([command])
    packet = sim.step([germinate("layer5.s0", "mlp-res-8")]).packets[0]
    graph = graph_builder(sim).build(packet, sim.blueprint_metadata)
    policy, generator = RandomPolicy(), torch.Generator().manual_seed(0)
    masks = graph.masks
    seen = set()
    for _ in range(400):
        inference = policy.decide(graph, generator=generator)
        action = inference.action
        spec = ACTION_SPACE[action.action]
        seen.add(action.action)
        assert bool(masks.action[action.action])
        log_prob = -math.log(int(masks.action.sum()))
        if spec.needs_seed:
            column = masks.seed[:, SEED_COLUMN[action.action]]
            assert bool(column[action.seed])
            log_prob -= math.log(int(column.sum()))
        if spec.needs_blueprint:
            assert bool(masks.blueprint[action.seed, action.blueprint])
            log_prob -= math.log(int(masks.blueprint[action.seed].sum()))
        if spec.has_blend:
            assert LOG_ALPHA_MIN <= action.alpha_log_steps <= LOG_ALPHA_MAX
            log_prob -= math.log(len(BLEND_METHODS) * (LOG_ALPHA_MAX - LOG_ALPHA_MIN))
        if spec.has_lr:
            assert abs(action.lr_log_scale) <= LR_LOG_SCALE_MAX
            log_prob -= math.log(2 * LR_LOG_SCALE_MAX)
        assert inference.log_prob == pytest.approx(log_prob)
    assert seen == set(torch.nonzero(masks.action)[:, 0].tolist())


def test_the_heuristic_germinates_at_a_deficit_layer_once_the_loss_plateaus() -> None:
    for seed in (1, 2, 3, 4):
        sim = VectorSim(QUIET, seed=seed)
        builder = graph_builder(sim)
        packets = sim.reset()
        policy = HeuristicPolicy()
        while True:
            graph = builder.build(packets[0], sim.blueprint_metadata)
            action = policy.decide(graph).action
            if action.spec.seed_operation == pb.SEED_OP_GERMINATE:
                break
            packets = sim.step([pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_NO_OP)]).packets
        assert sim.state.deficit_loss[0, sim.host.seed_layer[action.seed]] > 0
        assert sim.blueprint_metadata[graph.blueprint_ids[action.blueprint]].risk <= 0.15
        assert sim.step_index >= 200  # it waited for the plateau
