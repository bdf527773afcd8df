"""The rollout helper returns what PPO consumes, for any decision policy."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.reward import report_reward
from tamiyo_bus.policy.actions import log_prob
from tamiyo_bus.policy.heuristic import HeuristicPolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tests.policy.helpers import SMALL

SHORT = SimSettings(epochs=4)  # 400 steps, 100 decisions


def test_a_serving_policy_episode_gives_one_record_per_decision() -> None:
    sim = VectorSim(SHORT, runs=2, seed=9)
    policy = ServingPolicy(SMALL)
    torch.manual_seed(0)
    episodes = run_episode(
        sim, [policy, policy], graph_builder(sim), generator=torch.Generator().manual_seed(9)
    )
    decisions = SHORT.total_steps // SHORT.decision_every_steps
    for episode in episodes:
        records = episode.records
        assert len(records) == decisions
        assert [r.done for r in records] == [False] * (decisions - 1) + [True]
        assert episode.episode_return == pytest.approx(sum(r.reward for r in records))
        assert len({r.value for r in records}) > 1
        last = records[-1]
        with torch.no_grad():
            recomputed = log_prob(policy(last.graph), last.graph.masks, last.action)
        assert float(recomputed) == pytest.approx(last.log_prob, abs=1e-4)
        assert all(r.command.training_run_id == episode.training_run_id for r in records)
        assert episode.final_state.global_step == SHORT.total_steps


def test_acting_decisions_come_back_as_field_reports_with_a_reward() -> None:
    settings = dataclasses.replace(SimSettings(), epochs=12)
    sim = VectorSim(settings, seed=2)
    (episode,) = run_episode(sim, [HeuristicPolicy()], graph_builder(sim))
    acted = [
        r
        for r in episode.records
        if r.result.applied and r.command.command_type != pb.COMMAND_TYPE_NO_OP
    ]
    assert acted and len(episode.reports) == len(acted)
    assert {r.command_id for r in episode.reports} == {
        f"{episode.training_run_id}-c{r.command.global_step}" for r in acted
    }
    successes = [
        report_reward(report, settings.reward)
        for report in episode.reports
        if report.outcome == pb.FIELD_REPORT_OUTCOME_SUCCESS
    ]
    assert successes and sum(successes) / len(successes) > 0
