"""Shared pieces of the V-trace learner's tests: actors' segments and small settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.segments import ExperienceSettings
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.actor import ActorSettings, SimActor
from tamiyo_bus.sim.settings import SimSettings
from tamiyo_bus.simic.gate import ValidationGateSettings
from tests.policy.helpers import SMALL, holder_for

SHORT_SIM = SimSettings(epochs=2, steps_per_epoch=40, decision_every_steps=4)  # 20 a run


def initial_policy(seed: int = 0) -> ReferencePolicy:
    torch.manual_seed(seed)
    return ReferencePolicy(SMALL)


def actor_segments(
    policy: ReferencePolicy, *, runs: int = 4, seed: int = 0, version: int = 1,
    unroll_steps: int = 5,
) -> list[pb.Trajectory]:  # fmt: skip
    """One episode of ``runs`` simulated runs under ``policy``, as an actor sends it."""
    serving = ServingPolicy(policy.config)
    serving.load_state_dict(policy.state_dict())
    segments: list[pb.Trajectory] = []
    settings = ActorSettings(
        runs=runs, seed=seed, sim=SHORT_SIM,
        experience=ExperienceSettings(segment_max_steps=unroll_steps),
    )  # fmt: skip
    SimActor(settings, holder_for(serving, version), segments.append, actor_id="actor-t").play()
    return segments


def impala_settings(data_dir: Path, **overrides: object) -> ImpalaSettings:
    """Small batches and a short gate, for CI."""
    base = ImpalaSettings(
        data_dir=data_dir,
        batch_segments=8,
        buffer_max_segments=64,
        updates_per_publish=2,
        checkpoint_every_updates=2,
        base_lr=1e-3,
        gate=ValidationGateSettings(min_held_out_decisions=4, sim_runs=2, sim=SHORT_SIM),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]
