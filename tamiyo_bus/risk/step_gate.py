"""The risk engine as the step path's command gate: inference outcome -> breakers,
packet -> signals, proposal -> gated command.

``StepController`` (tamiyo_bus/step.py) asks ``inference_allowed()`` before it runs the
policy (an open inference breaker: the step answers NO_OP ``breaker.inference`` without
running it) and ``urza_wait_allowed()`` (not while the Urza breaker is open: the step
then decides from cached metadata), calls ``prepare(packet)`` while the policy decides,
and hands every stamped, unsigned proposal to ``review`` before it signs it. A deadline
miss and a call skipped because the previous inference is still running both count as
inference failures, so a wedged policy opens the breaker after a few steps instead of
being retried forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from oona.breaker import BreakerState
from tamiyo_bus.decision import InferenceOutcome, PolicyDecision
from tamiyo_bus.risk.gate import GateResult, PreparedScores, RiskGate
from tamiyo_bus.risk.tracker import BlueprintLookup, PacketSignals, SignalTracker


def relative_coverage(coverage: Mapping[str, float], best: dict[str, float]) -> float:
    """Feature coverage of a decision, relative to the best this run has delivered: the
    mean over node types of the present share divided by the largest seen so far
    (``best`` is updated in place).

    Relative, because degradation is a drop from what the trainer normally reports: a
    node type it never reports (activation statistics a lean trainer leaves out) says
    nothing about this step. The mean, not the minimum, so one type's gap does not hold
    the run at ORANGE on its own.
    """
    shares = []
    for node_type, share in coverage.items():
        seen = best[node_type] = max(best.get(node_type, 0.0), share)
        if seen > 0:
            shares.append(share / seen)
    return sum(shares) / len(shares) if shares else 1.0


@dataclass(frozen=True, slots=True)
class _Prepared:
    packet: pb.SystemStatePacket
    seen: PacketSignals
    scores: PreparedScores


class StepGate:
    """One per training run, used from the step path's thread.

    ``blueprints`` answers from what Urza's metadata cache holds now (no waiting); a
    decision is judged by the metadata the policy decided with instead.
    """

    def __init__(
        self, gate: RiskGate, blueprints: BlueprintLookup, tracker: SignalTracker | None = None
    ) -> None:
        self.gate = gate
        self.tracker = tracker or SignalTracker(gate.settings.tracker)
        self._blueprints = blueprints
        self._inference = gate.breakers[BreakerName.INFERENCE]
        self._urza = gate.breakers[BreakerName.URZA]
        self._epoch: int | None = None
        self._prepared: _Prepared | None = None
        self._best_coverage: dict[str, float] = {}
        self.last: GateResult | None = None

    def inference_allowed(self) -> bool:
        """Whether the step may run the policy (reserves the trial call when half-open)."""
        return self._inference.allow()

    def urza_wait_allowed(self) -> bool:
        """Whether the step may wait on Urza for missing metadata: not while the Urza
        breaker is open. Half-open, steps wait again, and the first outcome closes or
        re-opens the breaker (steps are sequential, so trials are too)."""
        return self._urza.state is not BreakerState.OPEN

    def prepare(self, packet: pb.SystemStatePacket) -> None:
        """Extract and score ``packet``'s own signals now, ahead of ``review`` of the same
        packet: the step path calls this while the policy decides, when its thread would
        only wait, so only the decision's part is left after the decision."""
        self._prepared = self._prepare(packet, self._blueprints)

    def review(
        self,
        proposal: pb.AdaptationCommand,
        packet: pb.SystemStatePacket,
        outcome: InferenceOutcome,
        decision: PolicyDecision | None,
    ) -> pb.AdaptationCommand:
        """The command to sign: ``proposal`` gated against ``packet`` (restricted in place)."""
        if decision is None:
            result = self.decide(packet, proposal, outcome=outcome, policy_expected_severity=None)
        else:
            if decision.urza_wait_allowed:
                if decision.urza_timed_out:
                    self._urza.record_failure()
                else:
                    self._urza.record_success()
            known = decision.blueprints
            result = self.decide(
                packet,
                proposal,
                outcome=outcome,
                policy_expected_severity=decision.inference.expected_severity,
                # The metadata the policy decided with: no lookup after the decision.
                blueprints=lambda _: known,
                feature_coverage=relative_coverage(decision.graph.coverage, self._best_coverage),
            )
        self.last = result
        return result.command

    def decide(
        self,
        packet: pb.SystemStatePacket,
        proposed: pb.AdaptationCommand,
        *,
        outcome: InferenceOutcome,
        policy_expected_severity: float | None,
        blueprints: BlueprintLookup | None = None,
        feature_coverage: float | None = None,
    ) -> GateResult:
        """Record the inference outcome on its breaker, complete this step's signals and
        gate ``proposed``; ``blueprints`` defaults to the cached metadata."""
        if outcome.decided:
            self._inference.record_success()
        elif outcome.failed:
            self._inference.record_failure()
        lookup = blueprints or self._blueprints
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared.packet is not packet:
            prepared = self._prepare(packet, lookup)
        proposed_blueprint = (
            proposed.seed.blueprint_id
            if proposed.command_type == pb.COMMAND_TYPE_SEED
            and proposed.seed.operation == pb.SEED_OP_GERMINATE
            else ""
        )
        decided = self.tracker.decision_signals(
            prepared.seen,
            blueprints=lookup,
            proposed_blueprint_id=proposed_blueprint,
            feature_coverage=feature_coverage,
            timed_out=outcome.missed_deadline,
        )
        return self.gate.gate_prepared(proposed, prepared.scores, decided, policy_expected_severity)

    def _prepare(self, packet: pb.SystemStatePacket, blueprints: BlueprintLookup) -> _Prepared:
        if packet.current_epoch != self._epoch:
            self._epoch = packet.current_epoch
            self.gate.new_epoch(packet.current_epoch)
        seen = self.tracker.observe_packet(packet, blueprints=blueprints)
        return _Prepared(packet, seen, self.gate.prepare(seen.values))
