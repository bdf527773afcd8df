"""What a policy earns in the simulator: one episode's return per simulated run.

Every policy compared on the same ``seed`` meets the same hidden runs (deficits,
instability, noise draws up to the first decision that differs), so their returns can
be compared run by run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from tamiyo_bus.policy.features import NormalizerSnapshot, RunningNormalizer
from tamiyo_bus.policy.serving import DecisionPolicy
from tamiyo_bus.sim.env import VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tamiyo_bus.sim.settings import SimSettings


def episode_returns(
    policies: Sequence[DecisionPolicy],
    settings: SimSettings,
    *,
    seed: int,
    normalizer: NormalizerSnapshot | None = None,
    greedy: bool = False,
) -> npt.NDArray[np.float64]:
    """The return of one episode of ``len(policies)`` runs, run ``r`` decided by
    ``policies[r]``; a trained policy needs the feature statistics it was trained with
    (``normalizer``), fixed for the whole evaluation."""
    sim = VectorSim(settings, runs=len(policies), seed=seed)
    statistics = RunningNormalizer(update=False)
    if normalizer is not None:
        statistics.load(normalizer)
    played = run_episode(
        sim,
        policies,
        graph_builder(sim, statistics),
        greedy=greedy,
        generator=torch.Generator().manual_seed(seed),
    )
    return np.array([e.episode_return for e in played])
