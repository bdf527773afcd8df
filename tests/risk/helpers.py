"""Shared pieces of the risk tests: an injectable clock, proposals, a recording sink."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from tamiyo_bus.risk import GateResult, RiskGate, RiskSettings, Signal
from tamiyo_bus.risk.signals import DECISION_SIGNALS


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def command(
    command_type: int = pb.COMMAND_TYPE_NO_OP,
    *,
    operation: int = pb.SEED_OP_UNKNOWN,
    blueprint_id: str = "",
    alpha_steps: int = 0,
    lr_scale: float | None = None,
    reason: str = "policy",
) -> pb.AdaptationCommand:
    out = pb.AdaptationCommand(
        version=1,
        command_id="cmd-1",
        issued_at_ns=123,
        issued_by="tamiyo",
        command_type=command_type,  # type: ignore[arg-type]
        reason=reason,
        policy_version=7,
        global_step=42,
        training_run_id="run-1",
    )
    if command_type == pb.COMMAND_TYPE_SEED:
        out.target_seed_id = "seed-1"
        out.seed.operation = operation  # type: ignore[assignment]
        out.seed.blueprint_id = blueprint_id
        out.seed.alpha_steps = alpha_steps
    if lr_scale is not None:
        out.optimizer.learning_rate_scale = lr_scale
    return out


def germinate(blueprint_id: str = "bp-good") -> pb.AdaptationCommand:
    return command(pb.COMMAND_TYPE_SEED, operation=pb.SEED_OP_GERMINATE, blueprint_id=blueprint_id)


def make_gate(
    settings: RiskSettings | None = None, clock: Clock | None = None
) -> tuple[RiskGate, BufferedEventSink, Clock]:
    clock = clock or Clock()
    sink = BufferedEventSink()
    return RiskGate(settings or RiskSettings(), sink, clock=clock), sink, clock


def static(metadata: Mapping[str, object]) -> Callable[[Sequence[str]], Mapping[str, Any]]:
    """A blueprint lookup that knows ``metadata``."""
    return lambda ids: metadata


NO_METADATA = static({})


def names(events: list[pb.TelemetryEvent] | tuple[pb.TelemetryEvent, ...]) -> list[str]:
    return [e.name for e in events]


def gate_once(
    gate: RiskGate,
    proposed: pb.AdaptationCommand,
    signals: Mapping[Signal, float],
    policy_expected_severity: float | None,
) -> GateResult:
    """Both halves of ``RiskGate`` in one call, for tests that score given signals."""
    known = {s: v for s, v in signals.items() if s not in DECISION_SIGNALS}
    decided = {s: v for s, v in signals.items() if s in DECISION_SIGNALS}
    return gate.gate_prepared(proposed, gate.prepare(known), decided, policy_expected_severity)
