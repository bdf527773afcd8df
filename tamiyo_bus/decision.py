"""What the inference worker hands back, how the policy's part of a step ended, and the
command a decision proposes.

A ``PolicyDecision`` is immutable and self-contained: the caller's thread turns it into
a command only if it arrived in time, so a late decision is simply dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import BreakerName
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.actions import BLEND_METHODS
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.serving import Inference
from tamiyo_bus.urza_client import BlueprintMetadata


class InferenceOutcome(StrEnum):
    """How the policy's part of one step ended. The value is the reason code the step's
    command carries unless the risk gate restricts it; the gate maps each outcome onto
    the inference breaker (a miss, a busy worker and an error are failures)."""

    DECIDED = "policy"  # the policy decided, with full inputs
    DECIDED_WITHOUT_URZA = "timeout_urza"  # decided without some blueprint metadata
    TIMED_OUT = "timeout_inference"  # inline: the deadline passed; the late result is dropped
    BUSY = "inference_busy"  # inline: not started, the previous inference still runs
    STALE = "stale_decision"  # ahead: decided on a state too many steps old, dropped
    FAILED = "inference_error"  # the policy raised
    REFUSED = f"breaker.{BreakerName.INFERENCE}"  # not started: the breaker is open

    @property
    def decided(self) -> bool:
        return self in _DECIDED

    @property
    def failed(self) -> bool:
        """Counts against the inference breaker."""
        return self in _FAILED

    @property
    def missed_deadline(self) -> bool:
        """Held a step up to its deadline: counts as a timeout among the risk signals."""
        return self in _MISSED


_DECIDED = frozenset({InferenceOutcome.DECIDED, InferenceOutcome.DECIDED_WITHOUT_URZA})
_MISSED = frozenset({InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY})
# A stale decision held no step up (it is dropped, not waited for), so it is no missed
# deadline; but a run of them is a slow or wedged policy, so the breaker counts it.
_FAILED = _MISSED | {InferenceOutcome.STALE, InferenceOutcome.FAILED}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    step: int  # the global step of the state the policy decided on
    policy_version: int
    architecture_id: str  # of the policy that decided
    inference: Inference
    graph: PolicyGraph
    urza_timed_out: bool
    # Whether the step could wait on Urza for missing metadata (False while the Urza
    # breaker was open: the decision used the cache alone, and says nothing of Urza's
    # health).
    urza_wait_allowed: bool
    # The blueprint metadata the policy decided with (candidates and the seeds' own),
    # so the gate judges the proposal by it without another lookup.
    blueprints: Mapping[str, BlueprintMetadata]
    build_ms: float
    inference_ms: float
    cpu_ms: float  # the worker's CPU time on this decision (what it took from the trainer)
    progress: Progress  # where the run stood in the state decided on (for the reward)


def propose_command(
    inference: Inference, graph: PolicyGraph, breaker_name: str
) -> pb.AdaptationCommand:
    """The unsigned, unstamped command a policy's choice on ``graph`` amounts to. The
    blueprint of a seed action is the chosen one for a germination, otherwise the one
    the seed's own state reports."""
    action = inference.action
    spec = action.spec
    command = pb.AdaptationCommand(version=1, command_type=spec.command_type)
    if spec.needs_seed:
        command.target_seed_id = graph.seed_ids[action.seed]
        seed = command.seed
        seed.operation = spec.seed_operation
        seed.blueprint_id = (
            graph.blueprint_ids[action.blueprint]
            if action.blueprint >= 0
            else graph.seed_blueprint_ids[action.seed]
        )
        if spec.has_blend:
            seed.blend_method = BLEND_METHODS[action.blend]
            seed.alpha_steps = action.alpha_steps
    if spec.has_lr:
        command.optimizer.learning_rate_scale = action.lr_scale
    if spec.breaker_action:
        command.circuit_breaker.action = spec.breaker_action
        command.circuit_breaker.breaker = breaker_name
    command.annotations["policy_value"] = f"{inference.value:.6g}"
    command.annotations["policy_log_prob"] = f"{inference.log_prob:.6g}"
    command.annotations["risk_expected_severity"] = f"{inference.expected_severity:.4f}"
    return command
