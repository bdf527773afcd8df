"""A scripted run through the risk engine's step-path seam (StepGate): a loss spike, a
quarantined blueprint, an inference hang, then recovery. The exact sequence of
commands, breaker transitions and events is the contract.

One decision per simulated second. Script settings: the inference breaker opens after 2
failures and cools down for 3 s; conservative mode needs 5 s of cool-down and 3 healthy
decisions; timeouts are counted over the last 3 decisions; the loss-volatility
thresholds are raised so the single spike is judged by its loss delta alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerSettings
from oona.events import BufferedEventSink
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.risk import (
    BreakerBankSettings,
    BreakerName,
    ConservativeSettings,
    RiskGate,
    RiskSettings,
    SignalTracker,
    StepGate,
    Thresholds,
    TrackerSettings,
    breaker_reason,
)

from .helpers import Clock, command, germinate, static


@dataclass(frozen=True)
class Meta:
    risk: float
    quarantined: bool = False


BLUEPRINTS = {"bp-good": Meta(0.1), "bp-bad": Meta(0.9, quarantined=True)}
OK, TIMEOUT, BUSY = "ok", "timeout", "busy"
# t: (training loss, seed on the quarantined blueprint's stage or None, inference)
SCRIPT: dict[int, tuple[float, int | None, str]] = {
    1: (1.0, None, OK),
    2: (1.0, None, OK),
    3: (1.4, None, OK),  # loss spike: 40 % over its moving average
    4: (1.0, pb.SEED_STAGE_TRAINING, OK),  # Urza quarantined a live seed's blueprint
    5: (1.0, pb.SEED_STAGE_CULLED, TIMEOUT),  # the seed is gone; inference hangs
    6: (1.0, pb.SEED_STAGE_CULLED, BUSY),  # still hung: the breaker opens
    7: (1.0, None, OK),
    8: (1.0, None, OK),
    9: (1.0, None, OK),  # cool-down over: the half-open trial succeeds
    10: (1.0, None, OK),
    11: (1.0, None, OK),
    12: (1.0, None, OK),
    13: (1.0, None, OK),
}
SEED, NO_OP, EMERGENCY = "COMMAND_TYPE_SEED", "COMMAND_TYPE_NO_OP", "COMMAND_TYPE_EMERGENCY"
EXPECTED_COMMANDS = [
    (1, SEED, "policy"),
    (2, SEED, "policy"),
    (3, NO_OP, "loss_delta"),  # RED
    (4, EMERGENCY, "blueprint_quarantine"),  # CRITICAL
    (5, NO_OP, "timeout_inference"),
    (6, NO_OP, "inference_busy"),
    (7, NO_OP, "breaker.inference"),  # the policy is not run while the breaker is open
    (8, NO_OP, "breaker.inference"),
    (9, NO_OP, "conservative_mode"),  # GREEN, but conservative mode holds germination
    (10, NO_OP, "conservative_mode"),
    (11, NO_OP, "conservative_mode"),  # 3 healthy decisions, but 4 s since the last RED (7)
    (12, SEED, "policy"),  # cool-down and healthy streak both met: mode off at this step
    (13, SEED, "policy"),
]
EXPECTED_TRANSITIONS = [
    (6, "closed", "open"),
    (9, "open", "half_open"),
    (9, "half_open", "closed"),
]
C, H, N = "MESSAGE_PRIORITY_CRITICAL", "MESSAGE_PRIORITY_HIGH", "MESSAGE_PRIORITY_NORMAL"
EXPECTED_EVENTS = [
    (3, "loss_spike", H, "loss_delta"),
    (3, "risk_category_changed", N, "RED"),
    (3, "conservative_entered", N, "loss_delta"),
    (4, "blueprint_quarantined", C, "blueprint_quarantine"),
    (4, "risk_category_changed", N, "CRITICAL"),
    (4, "emergency", C, "blueprint_quarantine"),
    (5, "timeout", H, "timeouts"),
    (5, "risk_category_changed", N, "YELLOW"),
    (6, "breaker_opened", C, "inference"),
    (6, "risk_category_changed", N, "RED"),
    (8, "risk_category_changed", N, "YELLOW"),
    (9, "breaker_half_open", N, "inference"),
    (9, "breaker_closed", N, "inference"),
    (9, "risk_category_changed", N, "GREEN"),
    (12, "conservative_exited", N, "loss_delta"),
]


def detail(event: pb.TelemetryEvent) -> str:
    a = event.attributes
    for key in ("breaker", "cause", "category" if event.name.startswith("risk_") else "signal"):
        if key in a:
            return a[key]
    return ""


def packet(t: int, loss: float, bad_stage: int | None) -> pb.SystemStatePacket:
    out = pb.SystemStatePacket(training_run_id="run-1", global_step=t, training_loss=loss)
    out.training_metrics.update({"gradient_norm": 2.0, "hook_latency_ms": 0.5})
    out.seed_states.add(seed_id="s-good", stage=pb.SEED_STAGE_DORMANT)
    if bad_stage is not None:
        out.seed_states.add(seed_id="s-bad", stage=bad_stage, blueprint_id="bp-bad")  # type: ignore[arg-type]
    return out


def test_spike_quarantine_hang_recovery() -> None:
    clock, sink = Clock(), BufferedEventSink()
    settings = RiskSettings(
        thresholds=Thresholds(loss_volatility_cv_base=0.5, loss_volatility_cv_emergency=1.0),
        breakers=BreakerBankSettings(inference=BreakerSettings(2, 3_000.0, 1)),
        conservative=ConservativeSettings(cooldown_s=5.0, exit_healthy_steps=3),
    )
    gate = RiskGate(settings, sink, clock=clock)
    stage = StepGate(
        gate, static(BLUEPRINTS), SignalTracker(TrackerSettings(timeout_window_decisions=3))
    )
    transitions: list[tuple[int, str, str]] = []
    gate.breakers.subscribe(lambda _, old, new: transitions.append((int(clock.now), old, new)))
    commands, events, modes = [], [], []
    for t, (loss, bad_stage, inference) in SCRIPT.items():
        clock.now = float(t)
        if stage.inference_allowed():
            outcome = {
                OK: InferenceOutcome.DECIDED,
                TIMEOUT: InferenceOutcome.TIMED_OUT,
                BUSY: InferenceOutcome.BUSY,
            }[inference]
            proposal = {
                OK: germinate("bp-good"),
                TIMEOUT: command(reason="timeout_inference"),
                BUSY: command(reason="inference_busy"),
            }[inference]
        else:
            outcome = InferenceOutcome.REFUSED
            proposal = command(reason=breaker_reason(BreakerName.INFERENCE))
        result = stage.decide(
            packet(t, loss, bad_stage),
            proposal,
            outcome=outcome,
            policy_expected_severity=0.05 if outcome.decided else None,
        )
        commands.append(
            (t, pb.CommandType.Name(result.command.command_type), result.command.reason)
        )
        events += [
            (t, e.name, pb.MessagePriority.Name(e.priority), detail(e)) for e in sink.drain()
        ]
        modes.append(result.conservative)
    assert commands == EXPECTED_COMMANDS
    assert transitions == EXPECTED_TRANSITIONS
    assert events == EXPECTED_EVENTS
    assert modes == [False, False] + [True] * 9 + [False, False]
    assert not gate.conservative.active and gate.breakers.all_closed()
