"""The risk gate on the real step path: Tamiyo from ``build_tamiyo``, driven by the
policy's real outputs (random-initialised weights)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerState
from oona.events import BufferedEventSink
from oona.keys import Signer
from tamiyo_bus import Tamiyo, TamiyoSettings, build_tamiyo
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.decision_telemetry import DecisionTelemetry
from tamiyo_bus.policy.actions import RISK_CLASSES
from tamiyo_bus.policy.features import NormalizerSettings, RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import Inference, ServingPolicy
from tamiyo_bus.risk import BreakerName, Category, RiskGate, RiskSettings, Signal, StepGate
from tamiyo_bus.risk.engine import CategoryRule, categorise
from tamiyo_bus.risk.signals import INDEX, ScoreTable, Thresholds
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.urza_client import (
    BlueprintCatalog,
    BlueprintMetadata,
)
from tests import states as synthetic
from tests.states import StaticBlueprintCatalog

from .helpers import Clock, gate_once, germinate

SIZE = synthetic.REFERENCE_SIZE


class HangingPolicy(ServingPolicy):
    """Its decisions block until released: a wedged inference."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        self.release.wait(30.0)
        return super().decide(graph, **kwargs)


@pytest.fixture(scope="module")
def policy() -> ServingPolicy:
    """Random-initialised, its risk head tilted towards "no risk" as a trained head reads
    a quiet run: an untrained head's near-uniform risk (severity about 0.5) lands in
    YELLOW or ORANGE depending on the draw, and an ORANGE gate withholds every command."""
    torch.manual_seed(0)
    policy = ServingPolicy()
    weights = policy.state_dict()
    weights["heads.context_out.bias"][-RISK_CLASSES:] += torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0])
    policy.load_state_dict(weights)  # repacks the fast path
    return policy


class Records:
    def __init__(self) -> None:
        self.records: list[DecisionTelemetry] = []

    def publish(self, telemetry: DecisionTelemetry) -> None:
        self.records.append(telemetry)


def rig(
    policy: ServingPolicy,
    catalogue: list[BlueprintMetadata],
    deadline_ms: float,
    telemetry: Records | None = None,
    *,
    urza: BlueprintCatalog | None = None,
    urza_deadline_ms: float = 10.0,
) -> tuple[Tamiyo, BufferedEventSink, Clock, list[pb.SystemStatePacket]]:
    """A started Tamiyo from the factory; without ``urza`` the catalogue is served from
    memory and prefetched."""
    static = StaticBlueprintCatalog(catalogue)
    settings = StepSettings(
        decision_mode=DecisionMode.INLINE,
        step_deadline_ms=deadline_ms,
        inference_budget_ms=min(deadline_ms / 2, 1_000.0),
        urza_deadline_ms=urza_deadline_ms,
    )
    clock, sink = Clock(), BufferedEventSink()
    tamiyo = build_tamiyo(
        TamiyoSettings(settings, normalizer=NormalizerSettings(update=False)),
        topology=synthetic.topology(SIZE),
        blueprints=urza or static,
        candidates=static.ids(),
        signer=Signer.generate(),
        holder=PolicyHolder(
            RunningPolicy(policy, "test", 1, architecture_id(policy), registry_digest())
        ),
        telemetry=telemetry,
        events=sink,
        clock=clock,
    ).start(prefetch_timeout_s=5.0 if urza is None else 0.0)
    rng = random.Random(3)
    packets = [
        synthetic.packet(SIZE, tamiyo.builder.topology, rng, step=1000 + i) for i in range(4)
    ]
    for packet in packets:
        packet.training_loss = 1.0  # synthetic losses are random draws: hold them steady
    return tamiyo, sink, clock, packets


def safe_catalogue(quarantined: tuple[int, ...] = ()) -> list[BlueprintMetadata]:
    return [
        dataclasses.replace(m, risk=0.1) for m in synthetic.catalogue(SIZE, quarantined=quarantined)
    ]


def test_gate_uses_the_risk_heads_expected_severity(policy: ServingPolicy) -> None:
    host = synthetic.topology(SIZE)
    entries = {m.blueprint_id: m for m in safe_catalogue()}
    builder = GraphBuilder(host, tuple(entries), RunningNormalizer(update=False))
    graph = builder.build(synthetic.packet(SIZE, host, random.Random(1)), entries)
    out = policy.fast(graph)
    table = ScoreTable.from_thresholds(Thresholds())

    def gated(risk_logits: torch.Tensor) -> tuple[float, Category]:
        severity = float(dataclasses.replace(out, risk_logits=risk_logits).expected_severity())
        gate = RiskGate(RiskSettings(), BufferedEventSink(), clock=Clock())
        return severity, gate_once(gate, germinate(), {}, severity).category

    severity, category = gated(out.risk_logits)
    expected = table.score(INDEX[Signal.POLICY_RISK], severity) * 0.8  # the policy-risk weight
    rule = CategoryRule()
    assert category is categorise(expected, int(expected >= rule.hot_score), rule)
    # A confident "no risk" head reads as low risk, a confident "critical" as high risk:
    # the arg-max's confidence (0.99+ in both) plays no part.
    severity, category = gated(torch.tensor([12.0, 0.0, 0.0, 0.0, 0.0]))
    assert severity < 0.01 and category is Category.GREEN
    severity, category = gated(torch.tensor([0.0, 0.0, 0.0, 0.0, 12.0]))
    assert severity > 0.99 and category is Category.RED


def test_evaluate_step_issues_gated_signed_commands(policy: ServingPolicy) -> None:
    records = Records()
    tamiyo, _, _, packets = rig(policy, safe_catalogue(), 2_000.0, records)
    gate = tamiyo.gate
    for packet in packets:
        command = tamiyo.evaluate_step(packet)
        tamiyo.controller.wait_idle(5.0)
        assert command.signature.signature  # signed after the gate
        assert gate.last is not None and gate.last.command is command
        assert command.annotations["risk_category"] == gate.last.category.name
        assert command.command_type != pb.COMMAND_TYPE_EMERGENCY
    assert tamiyo.wait_idle(5.0)
    assert len(records.records) == len(packets)
    for record in records.records:  # the risk engine's time is its own line of the breakdown
        assert 0.0 < record.risk_ms <= record.gating_ms


def test_quarantined_blueprint_in_the_model_gives_a_signed_emergency(
    policy: ServingPolicy,
) -> None:
    tamiyo, sink, _, packets = rig(policy, safe_catalogue((1,)), deadline_ms=2_000.0)
    controller = tamiyo.controller
    packet = packets[0]
    assert any(
        s.blueprint_id == "bp1" and s.stage != pb.SEED_STAGE_DORMANT for s in packet.seed_states
    )
    command = controller.evaluate_step(packet)
    controller.wait_idle(5.0)
    assert command.command_type == pb.COMMAND_TYPE_EMERGENCY
    assert command.reason == "blueprint_quarantine" and command.signature.signature
    critical = [e.name for e in sink.drain() if e.priority == pb.MESSAGE_PRIORITY_CRITICAL]
    assert critical == ["blueprint_quarantined", "emergency"]
    assert tamiyo.risk.conservative.active


def test_wedged_policy_opens_the_inference_breaker_then_recovers() -> None:
    torch.manual_seed(0)
    hanging = HangingPolicy()
    tamiyo, sink, clock, packets = rig(hanging, safe_catalogue(), deadline_ms=500.0)
    controller = tamiyo.controller
    steps: Iterator[pb.SystemStatePacket] = iter(packets * 4)
    reasons = [controller.evaluate_step(next(steps)).reason for _ in range(4)]
    assert reasons == [
        "timeout_inference",
        "inference_busy",
        "inference_busy",  # third failure in a row: the breaker opens
        "breaker.inference",
    ]
    events = [(e.name, pb.MessagePriority.Name(e.priority)) for e in sink.drain()]
    assert events == [
        ("timeout", "MESSAGE_PRIORITY_HIGH"),  # step 1
        ("risk_category_changed", "MESSAGE_PRIORITY_NORMAL"),  # to YELLOW: one timeout
        ("risk_category_changed", "MESSAGE_PRIORITY_NORMAL"),  # step 2, to RED: two
        ("conservative_entered", "MESSAGE_PRIORITY_NORMAL"),
        ("breaker_opened", "MESSAGE_PRIORITY_CRITICAL"),  # step 3; the mode is already on
    ]
    assert tamiyo.risk.conservative.cause == "timeouts"
    assert controller.stats.refused == 1  # step 4: the policy was not run
    hanging.release.set()
    assert controller.wait_idle(10.0)  # the late result is discarded
    clock.now = 5.0  # the inference breaker's cool-down
    command = controller.evaluate_step(next(steps))
    controller.wait_idle(5.0)
    # The policy answered (the trial call closes the breaker), but the recent deadline
    # misses still count in the timeouts signal's window: the decision is held.
    assert command.command_type == pb.COMMAND_TYPE_NO_OP and command.reason == "timeouts"
    assert [e.name for e in sink.drain() if e.name.startswith("breaker")] == [
        "breaker_half_open",
        "breaker_closed",
    ]


class HeldUrza:
    """Urza that answers from ``catalogue`` only once released."""

    def __init__(self, catalogue: list[BlueprintMetadata]) -> None:
        self.static = StaticBlueprintCatalog(catalogue)
        self.release = threading.Event()
        self.asked = threading.Event()

    def lookup(self, blueprint_ids: Sequence[str]) -> Mapping[str, BlueprintMetadata]:
        self.asked.set()
        self.release.wait(30.0)
        return self.static.lookup(blueprint_ids)


def test_an_open_urza_breaker_skips_the_wait_until_half_open(policy: ServingPolicy) -> None:
    urza = HeldUrza(safe_catalogue())
    urza_deadline_ms = 20_000.0  # a step that waited on Urza would take this long
    tamiyo, sink, clock, packets = rig(
        policy, safe_catalogue(), 60_000.0, urza=urza, urza_deadline_ms=urza_deadline_ms
    )
    controller = tamiyo.controller
    breaker = tamiyo.risk.breakers[BreakerName.URZA]
    for _ in range(breaker.settings.failure_threshold):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    sink.drain()

    started = time.perf_counter()
    controller.evaluate_step(packets[0])
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    assert controller.wait_idle(5.0)
    # Decided from the (empty) cache without waiting: Urza has not answered yet, the
    # decision lacked metadata, and that is no new failure of Urza's.
    assert urza.asked.is_set() and not urza.release.is_set()
    assert elapsed_ms < urza_deadline_ms / 2
    assert controller.stats.decided == 1 and controller.stats.timeouts == 0
    assert breaker.state is BreakerState.OPEN
    assert not [e.name for e in sink.drain() if e.name.startswith("breaker")]

    urza.release.set()  # Urza recovers; after the cool-down a step waits on it again
    clock.now += breaker.settings.cooldown_ms / 1000.0
    # Another packet: whatever blueprints the first step's lookup did not cover are
    # fetched after it, and this step waits for them.
    command = controller.evaluate_step(packets[1])
    assert controller.wait_idle(5.0)
    assert command.reason != "timeout_urza"
    assert breaker.state is BreakerState.CLOSED
    assert [e.name for e in sink.drain() if e.name.startswith("breaker")] == [
        "breaker_half_open",
        "breaker_closed",
    ]


def test_signals_prepared_while_the_policy_decides_gate_exactly_as_unprepared() -> None:
    catalogue = {m.blueprint_id: m for m in safe_catalogue((2,))}
    host = synthetic.topology(SIZE)
    rng = random.Random(11)
    packets = [synthetic.packet(SIZE, host, rng, step=100 + i) for i in range(12)]
    for i, packet in enumerate(packets):
        packet.training_loss = 1.0 + (3.0 if i == 6 else 0.0)  # one loss spike

    def lookup(ids: Sequence[str]) -> dict[str, BlueprintMetadata]:
        return {i: catalogue[i] for i in ids if i in catalogue}

    def run(prepared: bool) -> list[tuple[str, str, bool]]:
        stage = StepGate(RiskGate(RiskSettings(), BufferedEventSink(), clock=Clock()), lookup)
        out = []
        for i, packet in enumerate(packets):
            if prepared:
                stage.prepare(packet)
            proposal = germinate(f"bp{i % 8}")
            result = stage.decide(
                packet, proposal, outcome=InferenceOutcome.DECIDED,
                policy_expected_severity=0.1, feature_coverage=0.9,
            )  # fmt: skip
            out.append((result.category.name, result.reason, result.conservative))
        return out

    unprepared = run(prepared=False)
    assert run(prepared=True) == unprepared
    assert {reason for _, reason, _ in unprepared} >= {"loss_delta", "blueprint_quarantine"}
