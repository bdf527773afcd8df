"""What a risk level lets through: the proposed command, a safer one, NO_OP or EMERGENCY.

Pure. The category (and conservative mode) sets a restriction level; each command type
and seed operation has the level from which it is replaced by NO_OP:

    level            from   lets through
    ALLOW            GREEN  everything
    DOWNGRADE        YELLOW blends ramp ``downgrade_alpha_ramp_factor`` x slower; advance,
                            fossilise and learning-rate increases are held (NO_OP)
    NO_GERMINATION   ORANGE as DOWNGRADE, and no germination and no start of blending
    SAFE_ONLY        (conservative mode) only NO_OP, cull, learning-rate decreases,
                            pause, breaker, rollback and emergency commands
    NO_OP            RED    NO_OP
    EMERGENCY        CRITICAL an EMERGENCY command

A restricted command keeps the proposal's identity (id, step, run, policy version) so its
field report and signature still refer to this decision, takes the deciding reason code
as its reason, and names what it replaced in its annotations. The proposal is changed
in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk.engine import Category


class Restriction(IntEnum):
    ALLOW = 0
    DOWNGRADE = 1
    NO_GERMINATION = 2
    SAFE_ONLY = 3
    NO_OP = 4
    EMERGENCY = 5


_BY_CATEGORY: dict[Category, Restriction] = {
    Category.GREEN: Restriction.ALLOW,
    Category.YELLOW: Restriction.DOWNGRADE,
    Category.ORANGE: Restriction.NO_GERMINATION,
    Category.RED: Restriction.NO_OP,
    Category.CRITICAL: Restriction.EMERGENCY,
}

# The least restrictive level at which a seed operation is held (becomes NO_OP).
_SEED_HELD_FROM: dict[int, Restriction] = {
    pb.SEED_OP_GERMINATE: Restriction.NO_GERMINATION,
    pb.SEED_OP_START_TRAINING: Restriction.SAFE_ONLY,  # trains in isolation: harmless until then
    pb.SEED_OP_START_BLENDING: Restriction.NO_GERMINATION,  # slowed at DOWNGRADE
    pb.SEED_OP_ADVANCE: Restriction.DOWNGRADE,
    pb.SEED_OP_FOSSILIZE: Restriction.DOWNGRADE,
    pb.SEED_OP_CULL: Restriction.NO_OP,  # removing a seed is always the safe direction
}
# Command types that only ever make the run safer; held only from NO_OP.
_SAFE_TYPES = frozenset(
    {
        pb.COMMAND_TYPE_NO_OP,
        pb.COMMAND_TYPE_PAUSE,
        pb.COMMAND_TYPE_CIRCUIT_BREAKER,
        pb.COMMAND_TYPE_ROLLBACK,
        pb.COMMAND_TYPE_EMERGENCY,
    }
)


@dataclass(frozen=True, slots=True)
class GatingSettings:
    downgrade_alpha_ramp_factor: int = 2
    max_alpha_steps: int = 4096


def restriction(category: Category, conservative: bool) -> Restriction:
    """The level a decision is gated at: the category's, at least SAFE_ONLY in conservative mode."""
    level = _BY_CATEGORY[category]
    return max(level, Restriction.SAFE_ONLY) if conservative else level


def held_from(command: pb.AdaptationCommand) -> Restriction:
    """The least restrictive level at which ``command`` is replaced by NO_OP."""
    kind = command.command_type
    if kind in _SAFE_TYPES:
        return Restriction.NO_OP
    if kind == pb.COMMAND_TYPE_SEED:
        return _SEED_HELD_FROM.get(command.seed.operation, Restriction.DOWNGRADE)
    if kind == pb.COMMAND_TYPE_OPTIMIZER and command.optimizer.learning_rate_scale <= 1.0:
        return Restriction.NO_OP
    return Restriction.DOWNGRADE  # learning-rate increases and anything unrecognised


def restrict(
    command: pb.AdaptationCommand,
    level: Restriction,
    reason: str,
    settings: GatingSettings,
) -> bool:
    """Change ``command`` in place into what ``level`` lets through; True if it changed.

    In place, not into a copy: the step path owns the proposal, and a copy of it would
    be the largest part of the gate's cost, paid right after the decision.
    """
    if level is Restriction.EMERGENCY:
        turn_into(command, pb.COMMAND_TYPE_EMERGENCY, reason)
        return True
    if level >= held_from(command):
        if command.command_type == pb.COMMAND_TYPE_NO_OP:
            return False
        turn_into(command, pb.COMMAND_TYPE_NO_OP, reason)
        return True
    if (
        level >= Restriction.DOWNGRADE
        and command.command_type == pb.COMMAND_TYPE_SEED
        and command.seed.operation == pb.SEED_OP_START_BLENDING
    ):
        slow_blend(command, reason, settings)
        return True
    return False


def turn_into(
    command: pb.AdaptationCommand, command_type: pb.CommandType.ValueType, reason: str
) -> None:
    """Turn ``command`` into a payload-free command of ``command_type``; its identity (id,
    issue time, issuer, step, run, policy version) stays."""
    command.annotations["risk_replaced"] = _describe(command)
    if command.reason:
        command.annotations["risk_replaced_reason"] = command.reason
    payload = command.WhichOneof("payload")
    if payload is not None:
        command.ClearField(payload)
    command.ClearField("target_seed_id")
    command.command_type = command_type
    command.reason = reason


def slow_blend(command: pb.AdaptationCommand, reason: str, settings: GatingSettings) -> None:
    """The same start of blending with a longer alpha ramp."""
    command.annotations["risk_downgraded_alpha_steps"] = str(command.seed.alpha_steps)
    if command.reason:
        command.annotations["risk_replaced_reason"] = command.reason
    steps = max(command.seed.alpha_steps, 1) * settings.downgrade_alpha_ramp_factor
    command.seed.alpha_steps = min(steps, settings.max_alpha_steps)
    command.reason = reason


# Enum names as plain dicts: protobuf's Name() lookup is Python code the gate would run
# (cold) right after the decision.
_COMMAND_TYPE_NAMES = {number: name for name, number in pb.CommandType.items()}
_SEED_OPERATION_NAMES = {number: name for name, number in pb.SeedOperation.items()}


def _describe(command: pb.AdaptationCommand) -> str:
    name = _COMMAND_TYPE_NAMES.get(command.command_type, str(command.command_type))
    if command.command_type == pb.COMMAND_TYPE_SEED:
        operation = command.seed.operation
        return f"{name}/{_SEED_OPERATION_NAMES.get(operation, str(operation))}"
    return name
