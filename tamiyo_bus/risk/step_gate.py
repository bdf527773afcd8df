"""The risk engine as the step path's command gate.

``StepController`` (tamiyo_bus/step.py) asks the gate's ``inference_allowed()`` before
it runs the policy (an open inference breaker: the step answers NO_OP
``breaker.inference`` without running it), and hands every stamped, unsigned proposal
to ``review(proposal, context)`` before it signs it. ``RiskCommandGate`` is that gate:
it maps the step path's outcome onto the inference breaker, records Urza timeouts on
the Urza breaker (and, while that breaker is open, tells the step not to wait on
Urza, through ``urza_wait_allowed()``), reads the risk head's expected severity and
the feature coverage from the decision, and returns the gated command. The context is
typed by the protocols below, so this module depends on the step path's shape, not on
its imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from oona.breaker import BreakerState
from tamiyo_bus.risk.gate import GateResult, breaker_reason
from tamiyo_bus.risk.stage import InferenceOutcome, RiskStage
from tamiyo_bus.risk.tracker import BlueprintInfo, BlueprintLookup

# The step path's own reason codes for a step without a decision (tamiyo_bus.step).
_NO_DECISION: dict[str, InferenceOutcome] = {
    "timeout_inference": InferenceOutcome.TIMED_OUT,
    "inference_busy": InferenceOutcome.BUSY,
    "inference_error": InferenceOutcome.FAILED,
    breaker_reason(BreakerName.INFERENCE): InferenceOutcome.REFUSED,
}


class InferenceView(Protocol):
    @property
    def expected_severity(self) -> float: ...


class GraphView(Protocol):
    @property
    def coverage(self) -> Mapping[str, float]: ...


class DecisionView(Protocol):
    @property
    def inference(self) -> InferenceView: ...

    @property
    def graph(self) -> GraphView: ...

    @property
    def urza_timed_out(self) -> bool: ...

    @property
    def urza_wait_allowed(self) -> bool: ...

    @property
    def blueprints(self) -> Mapping[str, BlueprintInfo]: ...


class StepContext(Protocol):
    @property
    def packet(self) -> pb.SystemStatePacket: ...

    @property
    def decision(self) -> DecisionView | None: ...

    @property
    def reason(self) -> str: ...


def mean_coverage(coverage: Mapping[str, float]) -> float:
    """Feature coverage of a decision: the mean over node types of the present share.

    The mean, not the minimum: a trainer that never reports one node type's metrics
    would otherwise hold the run at ORANGE for good.
    """
    return sum(coverage.values()) / len(coverage) if coverage else 1.0


class RiskCommandGate:
    """``review`` runs on the caller's thread of ``evaluate_step``, once per decision."""

    def __init__(self, stage: RiskStage, blueprints: BlueprintLookup) -> None:
        self.stage = stage
        self._blueprints = blueprints
        self._urza = stage.gate.breakers[BreakerName.URZA]
        self.last: GateResult | None = None

    def inference_allowed(self) -> bool:
        """Whether the step may run the policy (reserves the trial call when half-open)."""
        return self.stage.inference_allowed()

    def prepare(self, packet: pb.SystemStatePacket) -> None:
        """The packet's own risk signals, extracted while the policy decides."""
        self.stage.prepare(packet, self._blueprints)

    def urza_wait_allowed(self) -> bool:
        """Whether the step may wait on Urza for missing metadata: not while the Urza
        breaker is open. Half-open, steps wait again, and the first outcome closes or
        re-opens the breaker (steps are sequential, so trials are too)."""
        return self._urza.state is not BreakerState.OPEN

    def review(self, proposal: pb.AdaptationCommand, context: StepContext) -> pb.AdaptationCommand:
        decision = context.decision
        if decision is None:
            result = self.stage.decide(
                context.packet,
                proposal,
                outcome=_NO_DECISION.get(context.reason, InferenceOutcome.FAILED),
                policy_expected_severity=None,
                blueprints=self._blueprints,
            )
        else:
            if decision.urza_wait_allowed:
                if decision.urza_timed_out:
                    self._urza.record_failure()
                else:
                    self._urza.record_success()
            known = decision.blueprints
            result = self.stage.decide(
                context.packet,
                proposal,
                outcome=InferenceOutcome.COMPLETED,
                policy_expected_severity=decision.inference.expected_severity,
                # The metadata the policy decided with: no lookup after the decision.
                blueprints=lambda _: known,
                feature_coverage=mean_coverage(decision.graph.coverage),
            )
        self.last = result
        return result.command
