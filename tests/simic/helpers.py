"""Shared pieces of the learner's tests: simulated experience through Tamiyo's encoder,
small settings, and filling a store as the intake would."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from tamiyo_bus.learning.replay import ReplaySettings, ReplayStorageSettings, ReplayWriterSettings
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.env import VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tamiyo_bus.sim.settings import SimSettings
from tamiyo_bus.simic.gate import ValidationGateSettings, is_held_out
from tamiyo_bus.simic.intake import check_segment
from tamiyo_bus.simic.settings import LearnerSettings
from tamiyo_bus.simic.simulated import SimulatedExperience, episode_experience
from tamiyo_bus.simic.store import ExperienceStore
from tests.policy.helpers import SMALL

SHORT_SIM = SimSettings(epochs=2)  # 50 decisions per run
SIGNER = "tamiyo-key"


def initial_policy(seed: int = 0) -> ReferencePolicy:
    torch.manual_seed(seed)
    return ReferencePolicy(SMALL)


def simulated(
    policy: ReferencePolicy, *, runs: int = 4, seed: int = 0, version: int = 1,
    sim: SimSettings = SHORT_SIM,
) -> SimulatedExperience:  # fmt: skip
    """Episodes of ``policy`` (sampling) as a Tamiyo running version ``version`` would
    publish them."""
    actor = ServingPolicy(policy.config)
    actor.load_state_dict(policy.state_dict())
    simulator = VectorSim(sim, runs=runs, seed=seed)
    episodes = run_episode(
        simulator,
        [actor] * runs,
        graph_builder(simulator, RunningNormalizer(update=False)),
        generator=torch.Generator().manual_seed(seed),
    )
    return episode_experience(
        episodes, architecture_id=architecture_id(policy), policy_version=version
    )


def learner_settings(data_dir: Path, **overrides: object) -> LearnerSettings:
    """Small batches, a small replay and a short gate, for CI."""
    base = LearnerSettings(
        data_dir=data_dir,
        batch_min_decisions=64,
        batch_max_decisions=256,
        replay_sample_decisions=32,
        updates_per_candidate=1,
        replay=ReplaySettings(
            storage=ReplayStorageSettings(capacity_transitions=1_000),
            writer=ReplayWriterSettings(max_age_steps=None),
        ),
        gate=ValidationGateSettings(
            min_held_out_decisions=8, value_error_tolerance=0.5, sim_runs=2, sim=SHORT_SIM
        ),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def fill(
    store: ExperienceStore, experience: SimulatedExperience, *, now_s: float,
    fraction: float = 0.1, signer: str = SIGNER,
) -> None:  # fmt: skip
    """Store what the intake would store of ``experience``."""
    for segment in experience.segments:
        check_segment(segment)
        held = [is_held_out(s.command_id, fraction) for s in segment.steps]
        store.add_segment(segment, signer, held_out=held, now_s=now_s)
    for report in experience.reports:
        store.add_report(report, report.SerializeToString(), signer, now_s=now_s)
