"""Kasmina's command rules that need no module, tensor or clock: pure functions that the
executor and the simulator (``tamiyo_bus.sim``) both apply, so that a command is
refused for the same reason, with the same name, in a real run and in a simulated one.

Each ``*_refusal`` function returns None when the command may go on, else the
:class:`Refusal` the executor reports (``ApplyResult.outcome`` and
``KasminaStats.refused`` use its ``reason``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.blending import SUPPORTED_METHODS
from tamiyo_bus.kasmina.lifecycle import ACTIVE, next_stage
from tamiyo_bus.urza.blueprint import Blueprint

S = pb.SeedLifecycleStage


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    detail: str = ""


def learning_rate_scale_refusal(command: pb.AdaptationCommand) -> Refusal | None:
    """An OPTIMIZER command must carry a finite, positive learning-rate scale."""
    scale = command.optimizer.learning_rate_scale
    if command.HasField("optimizer") and math.isfinite(scale) and scale > 0:
        return None
    return Refusal("invalid", f"learning-rate scale {scale}")


def transition_refusal(
    operation: pb.SeedOperation.ValueType, stage: pb.SeedLifecycleStage.ValueType
) -> Refusal | None:
    """A seed operation must apply to the seed's stage (``lifecycle.TRANSITIONS``)."""
    if next_stage(operation, stage) is not None:
        return None
    return Refusal(
        "wrong_stage", f"{pb.SeedOperation.Name(operation)} does not apply to {S.Name(stage)}"
    )


def paused_refusal(step: int, paused_until_step: int) -> Refusal | None:
    """A PAUSE freezes germination until its step."""
    if step < paused_until_step:
        return Refusal("paused", f"until step {paused_until_step}")
    return None


def germination_refusal(
    blueprint: Blueprint, layer_kind: str, parameters: Mapping[str, float]
) -> Refusal | None:
    """The blueprint must be free of quarantine, fit the layer and allow the parameters."""
    if blueprint.quarantined:
        return Refusal("quarantined", f"{blueprint.blueprint_id}: {blueprint.quarantine_reason}")
    if layer_kind not in blueprint.layer_kinds:
        return Refusal("incompatible", f"{blueprint.blueprint_id} does not fit {layer_kind}")
    problem = blueprint.check_parameters(parameters)
    return None if problem is None else Refusal("invalid", problem)


def blend_refusal(order: pb.SeedCommand) -> Refusal | None:
    """START_BLENDING needs a supported schedule and a ramp of at least one step."""
    if order.blend_method not in SUPPORTED_METHODS:
        return Refusal("invalid", f"blend method {order.blend_method}")
    if order.alpha_steps < 1:
        return Refusal("invalid", "alpha_steps must be at least 1")
    return None


SCHEDULED_REASON: Mapping[int, str] = {
    pb.SEED_STAGE_EMBARGOED: "embargo",
    pb.SEED_STAGE_RESETTING: "embargo_over",
    pb.SEED_STAGE_DORMANT: "reset",
}
"""The reason a lifecycle event gives for each stage ``scheduled_stage`` moves a slot to."""


def scheduled_stage(
    stage: int, waited_steps: int, embargo_steps: int
) -> pb.SeedLifecycleStage.ValueType | None:
    """Where a culled slot goes on its own after ``waited_steps`` in ``stage``, if anywhere.

    CULLED and RESETTING last one step (so a packet shows them), EMBARGOED
    ``embargo_steps``; then the slot is DORMANT again.
    """
    if stage == pb.SEED_STAGE_CULLED and waited_steps >= 1:
        return pb.SEED_STAGE_EMBARGOED
    if stage == pb.SEED_STAGE_EMBARGOED and waited_steps >= embargo_steps:
        return pb.SEED_STAGE_RESETTING
    if stage == pb.SEED_STAGE_RESETTING and waited_steps >= 1:
        return pb.SEED_STAGE_DORMANT
    return None


def swept_by(command_type: int, stage: int) -> bool:
    """Whether an EMERGENCY, or a ROLLBACK that names no seed, culls a seed in ``stage``.

    An emergency culls every active seed; a run-wide rollback every active seed but a
    TRAINING one (isolated from the host, so it cannot have caused the regression).
    """
    if command_type == pb.COMMAND_TYPE_EMERGENCY:
        return stage in ACTIVE
    return (
        command_type == pb.COMMAND_TYPE_ROLLBACK
        and stage in ACTIVE
        and stage != pb.SEED_STAGE_TRAINING
    )
