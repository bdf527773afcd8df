"""The risk engine's seam with the step path: inference outcome -> breaker, packet ->
signals, proposal -> gated command.

The step path asks ``inference_allowed()`` before it runs the policy (an open inference
breaker means: do not run it, propose NO_OP with ``breaker_reason(INFERENCE)``), then
hands ``decide`` what happened. A deadline miss and a call skipped because the previous
inference is still running both count as inference failures, so a wedged policy opens
the breaker after a few steps instead of being retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from tamiyo_bus.risk.gate import GateResult, PreparedScores, RiskGate
from tamiyo_bus.risk.tracker import BlueprintLookup, PacketSignals, SignalTracker


class InferenceOutcome(StrEnum):
    COMPLETED = "completed"  # the policy answered within its deadline
    TIMED_OUT = "timed_out"  # the deadline passed; the late result is discarded
    BUSY = "busy"  # not started: the previous inference is still running
    FAILED = "failed"  # the policy raised
    REFUSED = "refused"  # not started: the inference breaker is open


_FAILURES = frozenset({InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY, InferenceOutcome.FAILED})
_TIMEOUTS = frozenset({InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY})


@dataclass(frozen=True, slots=True)
class _Prepared:
    packet: pb.SystemStatePacket
    seen: PacketSignals
    scores: PreparedScores


class RiskStage:
    """One per training run, used from the step path's thread."""

    def __init__(self, gate: RiskGate, tracker: SignalTracker | None = None) -> None:
        self.gate = gate
        self.tracker = tracker or SignalTracker()
        self._inference = gate.breakers[BreakerName.INFERENCE]
        self._epoch: int | None = None
        self._prepared: _Prepared | None = None

    def prepare(self, packet: pb.SystemStatePacket, blueprints: BlueprintLookup) -> None:
        """Extract and score ``packet``'s own signals now, ahead of ``decide(packet, ...)``
        for the same packet: the step path calls this while the policy decides, when its
        thread would only wait, so only the decision's part is left after the decision."""
        self._prepared = self._prepare(packet, blueprints)

    def inference_allowed(self) -> bool:
        """Whether to run the policy now (reserves the trial call when half-open)."""
        return self._inference.allow()

    def decide(
        self,
        packet: pb.SystemStatePacket,
        proposed: pb.AdaptationCommand,
        *,
        outcome: InferenceOutcome,
        policy_expected_severity: float | None,
        blueprints: BlueprintLookup,
        feature_coverage: float | None = None,
    ) -> GateResult:
        """Record the inference outcome, complete this step's signals and gate ``proposed``."""
        if outcome is InferenceOutcome.COMPLETED:
            self._inference.record_success()
        elif outcome in _FAILURES:
            self._inference.record_failure()
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared.packet is not packet:
            prepared = self._prepare(packet, blueprints)
        proposed_blueprint = (
            proposed.seed.blueprint_id
            if proposed.command_type == pb.COMMAND_TYPE_SEED
            and proposed.seed.operation == pb.SEED_OP_GERMINATE
            else ""
        )
        decided = self.tracker.decision_signals(
            prepared.seen,
            blueprints=blueprints,
            proposed_blueprint_id=proposed_blueprint,
            feature_coverage=feature_coverage,
            timed_out=outcome in _TIMEOUTS,
        )
        return self.gate.gate_prepared(proposed, prepared.scores, decided, policy_expected_severity)

    def _prepare(self, packet: pb.SystemStatePacket, blueprints: BlueprintLookup) -> _Prepared:
        if packet.current_epoch != self._epoch:
            self._epoch = packet.current_epoch
            self.gate.new_epoch(packet.current_epoch)
        seen = self.tracker.observe_packet(packet, blueprints=blueprints)
        return _Prepared(packet, seen, self.gate.prepare(seen.values))
