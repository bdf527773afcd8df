"""Per-decision telemetry, handed off the step path through a bounded queue.

The step path only builds a small frozen record and submits it; a background worker
hands records to the sink (the bus publisher, wired by the app). When the queue is
full the oldest record is dropped and counted: the step path never waits, and the
freshest decisions are the ones kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tamiyo_bus.worker import DropRule, QueueWorker


@dataclass(frozen=True, slots=True)
class DecisionTelemetry:
    command_id: str
    training_run_id: str
    global_step: int  # the step the command is applied at
    decision_step: int  # the step whose state the policy decided on
    cadence_steps: int  # the decision interval in force
    policy_version: int
    command_type: int  # leyline CommandType
    action: str  # action-space name, e.g. "COMMAND_TYPE_SEED/SEED_OP_GERMINATE"
    reason: str
    total_ms: float  # whole evaluate_step as the caller saw it
    build_ms: float  # blueprint lookup + graph build (0 when the policy did not run)
    inference_ms: float
    gating_ms: float  # command assembly and stamping plus the gate's review
    risk_ms: float  # the gate's review alone: the risk engine's share of the decision
    signing_ms: float
    compile_state: str
    feature_coverage: Mapping[str, float]  # per node type, empty when nothing was built
    expected_risk_severity: float | None
    urza_timed_out: bool


class TelemetrySink(Protocol):
    def publish(self, telemetry: DecisionTelemetry) -> None: ...


def telemetry_publisher(
    sink: TelemetrySink, *, queue_size: int, linger_ms: float = 0.0
) -> QueueWorker[DecisionTelemetry]:
    """Bounded, drop-oldest hand-off from the step path to ``sink`` (the freshest
    decisions are the ones kept; a failing sink is counted and never stops it)."""
    return QueueWorker(
        "tamiyo-telemetry",
        capacity=queue_size,
        drop=DropRule.DROP_OLDEST,
        handle_item=sink.publish,
        linger_ms=linger_ms,
    )
