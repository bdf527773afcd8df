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

A replaced command keeps the proposal's identity (id, step, run, policy version) so its
field report and signature still refer to this decision, takes the deciding reason code
as its reason, and names what it replaced in its annotations.
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


def apply_restriction(
    command: pb.AdaptationCommand,
    level: Restriction,
    reason: str,
    settings: GatingSettings,
) -> pb.AdaptationCommand | None:
    """The command to issue at ``level``, or None when ``command`` passes unchanged."""
    if level is Restriction.EMERGENCY:
        return replaced(command, pb.COMMAND_TYPE_EMERGENCY, reason)
    if level >= held_from(command):
        if command.command_type == pb.COMMAND_TYPE_NO_OP:
            return None
        return replaced(command, pb.COMMAND_TYPE_NO_OP, reason)
    if (
        level >= Restriction.DOWNGRADE
        and command.command_type == pb.COMMAND_TYPE_SEED
        and command.seed.operation == pb.SEED_OP_START_BLENDING
    ):
        return slowed_blend(command, reason, settings)
    return None


def replaced(
    command: pb.AdaptationCommand, command_type: pb.CommandType.ValueType, reason: str
) -> pb.AdaptationCommand:
    """A payload-free command of ``command_type`` with the proposal's identity."""
    out = pb.AdaptationCommand(
        version=command.version,
        command_id=command.command_id,
        issued_at_ns=command.issued_at_ns,
        issued_by=command.issued_by,
        command_type=command_type,
        reason=reason,
        policy_version=command.policy_version,
        global_step=command.global_step,
        training_run_id=command.training_run_id,
    )
    out.annotations.update(command.annotations)
    out.annotations["risk_replaced"] = _describe(command)
    if command.reason:
        out.annotations["risk_replaced_reason"] = command.reason
    return out


def slowed_blend(
    command: pb.AdaptationCommand, reason: str, settings: GatingSettings
) -> pb.AdaptationCommand:
    """The same start of blending with a longer alpha ramp."""
    out = pb.AdaptationCommand()
    out.CopyFrom(command)
    steps = max(command.seed.alpha_steps, 1) * settings.downgrade_alpha_ramp_factor
    out.seed.alpha_steps = min(steps, settings.max_alpha_steps)
    out.reason = reason
    out.annotations["risk_downgraded_alpha_steps"] = str(command.seed.alpha_steps)
    if command.reason:
        out.annotations["risk_replaced_reason"] = command.reason
    return out


def _describe(command: pb.AdaptationCommand) -> str:
    name = pb.CommandType.Name(command.command_type)
    if command.command_type == pb.COMMAND_TYPE_SEED:
        return f"{name}/{pb.SeedOperation.Name(command.seed.operation)}"
    return name
