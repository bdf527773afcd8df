"""Tamiyo's step-path configuration: frozen dataclasses, every budget named with its unit."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DecisionMode(StrEnum):
    """How a decision reaches the trainer's step (docs/step-path.md)."""

    AHEAD = "ahead"  # decided on an earlier state; the step never waits
    INLINE = "inline"  # decided on this state within the step deadline, else NO_OP
    SYNCHRONOUS = "synchronous"  # decided on this state, however long it takes


@dataclass(frozen=True)
class StepSettings:
    """Budgets and knobs of the step path (docs/step-path.md).

    In ``inline`` mode the caller of ``evaluate_step`` never waits longer than
    ``step_deadline_ms``: the wait for the inference worker ends ``finish_reserve_ms``
    before it, leaving that much to assemble, gate and sign the command.
    """

    decision_mode: DecisionMode = DecisionMode.AHEAD
    # ahead: a decision made on a state more than this many steps old is dropped
    max_decision_age_steps: int = 2
    # a packet for the policy every this many steps; 0: chosen from max_step_share
    decision_every_steps: int = 0
    # auto cadence: Tamiyo's decisions take at most this share of the host's step time
    max_step_share: float = 0.10
    max_decision_every_steps: int = 1_000  # the auto cadence's longest interval
    cost_smoothing: float = 0.1  # weight of the newest measurement in the cost averages
    step_deadline_ms: float = 5.0  # inline: the longest the step waits for the policy
    finish_reserve_ms: float = 0.4  # inline: kept from the deadline to gate and sign
    # Policy inference budget (p95). Inline, a step waits on a blueprint-metadata cache
    # miss only as long as this much of the deadline still remains for inference.
    inference_budget_ms: float = 3.0
    urza_deadline_ms: float = 10.0  # longest wait on Urza for missing blueprint metadata
    sample_actions: bool = False  # False: greedy decisions; True: sample (exploration)
    issued_by: str = "tamiyo"
    circuit_breaker_name: str = "tamiyo.policy"  # breaker named by the policy's breaker action

    def __post_init__(self) -> None:
        if self.max_decision_age_steps < 0 or self.decision_every_steps < 0:
            raise ValueError("max_decision_age_steps and decision_every_steps must be >= 0")
        if self.max_decision_every_steps < 1:
            raise ValueError("max_decision_every_steps must be >= 1")
