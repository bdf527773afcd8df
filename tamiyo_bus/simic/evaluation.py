"""The figures the validation gate judges: held-out errors and KL, simulated returns.

Held-out decisions were decided by the behaviour policy (the running one, or an older
version Tamiyo still ran), so their actions are draws of the running policy's choices:
the mean KL(running || candidate) is estimated on them as PPO's ``approx_kl`` estimates
it, ``mean((r - 1) - log r)`` with ``r = pi_candidate / pi_running``. The value error is
each critic's mean squared error against the held-out decisions' return estimates.

The simulated evaluation plays the same seeded runs with the running policy and with
the candidate, each deciding greedily as Tamiyo does by default, so the returns differ
by the policies' choices alone. Sampling would not do: after the first draw that
differs, the two evaluations' runs diverge, and two policies a thousandth apart in
their weights differed by 0.35 in mean return over 8 runs (4 seeds, measured), more
than any useful tolerance; greedily they return the same. Both see one fixed feature
normalisation: the start checkpoint's statistics, or, without one, statistics fitted
to random-policy episodes of those runs.
"""

from __future__ import annotations

import numpy as np
import torch

from tamiyo_bus.learning.episodes import observed_features
from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.ppo import approx_kl
from tamiyo_bus.policy.baselines import RandomPolicy
from tamiyo_bus.policy.features import NormalizerSnapshot, RunningNormalizer
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.env import VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tamiyo_bus.simic.gate import HeldOutFigures, SimFigures, ValidationGateSettings

EVALUATION_CHUNK_TRANSITIONS = 256  # graphs per forward: bounds the memory of one pass


@torch.no_grad()
def log_probs_and_values(
    policy: ReferencePolicy, inputs: GraphTransitions
) -> tuple[torch.Tensor, torch.Tensor]:
    """[T] log-probability of each transition's choice and its value, in chunks."""
    evaluator = GraphPolicyEvaluator(policy)
    log_probs, values = [], []
    for start in range(0, len(inputs), EVALUATION_CHUNK_TRANSITIONS):
        indices = torch.arange(start, min(start + EVALUATION_CHUNK_TRANSITIONS, len(inputs)))
        evaluation = evaluator.evaluate(inputs, indices)
        log_probs.append(evaluation.log_prob.float().cpu())
        values.append(evaluation.value.float().cpu())
    if not log_probs:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(log_probs), torch.cat(values)


def held_out_figures(
    running: ReferencePolicy,
    candidate: ReferencePolicy,
    inputs: GraphTransitions,
    returns: torch.Tensor,
) -> HeldOutFigures:
    running_log_prob, running_value = log_probs_and_values(running, inputs)
    candidate_log_prob, candidate_value = log_probs_and_values(candidate, inputs)
    return HeldOutFigures(
        decisions=len(inputs),
        running_value_error=float(((running_value - returns) ** 2).mean()),
        candidate_value_error=float(((candidate_value - returns) ** 2).mean()),
        kl=float(approx_kl(candidate_log_prob - running_log_prob)),
    )


class SimEvaluator:
    """Plays the gate's seeded simulated runs under a policy."""

    def __init__(
        self, settings: ValidationGateSettings, normalizer: NormalizerSnapshot | None = None
    ) -> None:
        self.settings = settings
        self.normalizer = normalizer if normalizer is not None else self._fitted()

    def _sim(self) -> VectorSim:
        s = self.settings
        return VectorSim(s.sim, runs=s.sim_runs, seed=s.sim_seed)

    def _fitted(self) -> NormalizerSnapshot:
        """Statistics of random-policy episodes of the gate's runs."""
        sim = self._sim()
        episodes = run_episode(
            sim,
            [RandomPolicy()] * sim.runs,
            graph_builder(sim),
            generator=torch.Generator().manual_seed(self.settings.sim_seed),
        )
        return NormalizerSnapshot.initial().merged(observed_features(episodes))

    def mean_return(self, policy: ReferencePolicy) -> float:
        actor = ServingPolicy(policy.config)
        actor.load_state_dict(policy.state_dict())
        sim = self._sim()
        normalizer = RunningNormalizer(update=False)
        normalizer.load(self.normalizer)
        episodes = run_episode(sim, [actor] * sim.runs, graph_builder(sim, normalizer), greedy=True)
        return float(np.mean([e.episode_return for e in episodes]))

    def figures(self, running: ReferencePolicy, candidate: ReferencePolicy) -> SimFigures:
        return SimFigures(self.mean_return(running), self.mean_return(candidate))
