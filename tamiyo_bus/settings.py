"""Tamiyo's configuration: frozen dataclasses, every budget named with its unit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepSettings:
    """Budgets and knobs of the step path (docs/step-path.md).

    The caller of ``evaluate_step`` never waits longer than ``step_deadline_ms``: the
    wait for the inference worker ends ``finish_reserve_ms`` before it, leaving that
    much to assemble, gate and sign the command.
    """

    step_deadline_ms: float = 5.0
    finish_reserve_ms: float = 0.4
    # Policy inference budget (p95). A step waits on a blueprint-metadata cache miss
    # only as long as this much of the deadline still remains for inference.
    inference_budget_ms: float = 3.0
    urza_deadline_ms: float = 10.0  # longest wait on Urza for missing blueprint metadata
    sample_actions: bool = False  # False: greedy decisions; True: sample (exploration)
    issued_by: str = "tamiyo"
    circuit_breaker_name: str = "tamiyo.policy"  # breaker named by the policy's breaker action
