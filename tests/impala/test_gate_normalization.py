"""The gate's simulated runs show a policy the features the actors showed it: the
actors' graph builder loads no statistics, so neither does the gate (statistics fitted
to random-policy episodes judged every candidate on inputs it was never trained on)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from tamiyo_bus.impala.learner import ImpalaLearner
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.actor import actor_statistics
from tamiyo_bus.sim.returns import episode_returns

from .helpers import SHORT_SIM, impala_settings, initial_policy


def test_the_gates_simulated_runs_play_the_policy_as_the_actors_do(tmp_path: Path) -> None:
    settings = impala_settings(tmp_path)
    gate = replace(settings.gate, sim_runs=4, sim=SHORT_SIM)
    learner = ImpalaLearner(replace(settings, gate=gate), initial_policy(seed=3))
    serving = ServingPolicy(learner.policy.config)
    serving.load_state_dict(learner.policy.state_dict())
    as_actors_play = episode_returns(
        [serving] * gate.sim_runs, gate.sim, seed=gate.sim_seed, greedy=True,
        normalizer=actor_statistics(),
    )  # fmt: skip
    figures = learner._sim_figures()
    assert figures.running_return == float(np.mean(as_actors_play))
