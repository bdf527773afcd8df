"""Commands and quiet settings for the simulator tests."""

from __future__ import annotations

import dataclasses

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.sim import DynamicsSettings, SimSettings, VectorSim

NO_OP = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_NO_OP)
QUIET = SimSettings(
    dynamics=DynamicsSettings(
        instability_onset_per_step=0.0,
        isolation_violation_per_risk_step=0.0,
        blend_spike_probability_per_risk=0.0,
    )
)
"""No instability episodes, violations or blend spikes: only what a test provokes."""


def seed_command(seed_id: str, operation: int, **fields: object) -> pb.AdaptationCommand:
    command = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_SEED, target_seed_id=seed_id)
    command.seed.operation = operation  # type: ignore[assignment]
    for name, value in fields.items():
        setattr(command.seed, name, value)
    return command


def germinate(seed_id: str, blueprint_id: str) -> pb.AdaptationCommand:
    return seed_command(seed_id, pb.SEED_OP_GERMINATE, blueprint_id=blueprint_id)


def start_blending(seed_id: str, alpha_steps: int = 16) -> pb.AdaptationCommand:
    return seed_command(
        seed_id,
        pb.SEED_OP_START_BLENDING,
        blend_method=pb.BLEND_METHOD_LINEAR,
        alpha_steps=alpha_steps,
    )


def deficit_layer(sim: VectorSim, run: int = 0) -> int:
    """The hidden layer with the largest deficit (tests may peek; policies may not)."""
    return int(sim.state.deficit_loss[run].argmax())


def healthy_layer(sim: VectorSim, kind: str, run: int = 0) -> int:
    """A layer of ``kind`` without a deficit."""
    for layer, layer_kind in enumerate(sim.host.layer_kinds):
        if layer_kind == kind and sim.state.deficit_loss[run, layer] == 0.0:
            return layer
    raise AssertionError(f"no healthy {kind} layer")


def with_deficit_on(settings: SimSettings, *, kind: str) -> SimSettings:
    """Settings whose host is all ``kind`` layers (so the deficit is on one of them)."""
    host = dataclasses.replace(settings.host, layer_kinds=(kind,) * 6)
    return dataclasses.replace(settings, host=host)


def walk(sim: VectorSim, commands: list[pb.AdaptationCommand]) -> list[str]:
    """Send ``commands`` (one per decision, run 0) and return the outcome of each."""
    outcomes = []
    for command in commands:
        outcomes.append(sim.step([command]).results[0].outcome)
    return outcomes
