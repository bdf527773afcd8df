"""What the demo keeps of a run: every step's record and every epoch's, in memory.

A step appends one small record (the command travels by reference); nothing is written
until the run is over, so recording costs the step path a list append.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.tolaria.trainer import EpochRecord, StepRecord

NOT_DECIDED = frozenset(outcome for outcome in InferenceOutcome if not outcome.decided)
"""Reasons of a NO_OP the policy did not choose: late, busy, failed or not asked."""
REPLACED_REASON = "risk_replaced_reason"  # the risk gate keeps the proposal's reason here


def policy_decided(command: pb.AdaptationCommand) -> bool:
    """Whether the policy made this decision in time; the risk gate may have changed the
    command since (its original reason is then in the annotations)."""
    return command.annotations.get(REPLACED_REASON, command.reason) not in NOT_DECIDED


def describe(command: pb.AdaptationCommand) -> str:
    """A command's kind in words, from the generated enums: ``SEED/GERMINATE``, ``NO_OP``."""
    kind = pb.CommandType.Name(command.command_type).removeprefix("COMMAND_TYPE_")
    if command.HasField("seed"):
        return f"{kind}/{pb.SeedOperation.Name(command.seed.operation).removeprefix('SEED_OP_')}"
    if command.HasField("circuit_breaker"):
        action = pb.BreakerAction.Name(command.circuit_breaker.action)
        return f"{kind}/{action.removeprefix('BREAKER_ACTION_')}"
    return kind


@dataclass
class RunRecorder:
    """A TrainingObserver that keeps the run for the summary and the report."""

    steps: list[StepRecord] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)

    def on_step(self, record: StepRecord) -> None:
        self.steps.append(record)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.epochs.append(record)

    @property
    def decisions(self) -> list[tuple[StepRecord, pb.AdaptationCommand]]:
        return [(r, r.command) for r in self.steps if r.command is not None]
