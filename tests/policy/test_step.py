"""evaluate_step: decisions, stamping and signatures, deadlines, busy worker, Urza
deadline, errors, gate, telemetry."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import InferenceOutcome, PolicyDecision
from tamiyo_bus.decision_telemetry import telemetry_publisher
from tamiyo_bus.policy.actions import ACTION_SPACE
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.serving import Inference, ServingPolicy
from tamiyo_bus.security.commands import CommandSigner
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.step import StepController
from tamiyo_bus.urza_client import BlueprintMetadata
from tests.policy.helpers import RELAXED, SMALL, Collect, make_stack

DEADLINE = StepSettings(decision_mode=DecisionMode.INLINE, step_deadline_ms=5.0)
REPO = Path(__file__).resolve().parents[2]


class HangingPolicy(ServingPolicy):
    """Blocks in decide until released (never, unless a test releases it)."""

    def __init__(self) -> None:
        super().__init__(SMALL)
        self.entered = threading.Event()
        self.release = threading.Event()

    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        self.entered.set()
        self.release.wait()
        return super().decide(graph, **kwargs)


class FailingPolicy(ServingPolicy):
    def decide(self, graph: PolicyGraph, **kwargs: Any) -> Inference:
        raise RuntimeError("policy exploded")


def test_a_decision_is_stamped_signed_and_names_its_policy() -> None:
    stack = make_stack()
    commands = [stack.controller.evaluate_step(stack.packet(step)) for step in (10, 11, 12)]
    for step, command in zip((10, 11, 12), commands, strict=True):
        assert command.reason == InferenceOutcome.DECIDED
        assert command.command_type != pb.COMMAND_TYPE_UNKNOWN
        assert command.policy_version == 1
        assert command.global_step == step
        assert command.training_run_id == "synthetic-run"
        assert command.issued_by == "tamiyo"
        assert command.issued_at_ns > 0
        stack.verify(command)
    ids = [c.command_id for c in commands]
    assert len(set(ids)) == 3
    assert ids == sorted(ids)  # time-ordered


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seed_commands_name_a_valid_target(seed: int) -> None:
    """Whatever the policy samples, a seed command targets a seed that is in a stage the
    operation accepts, and a germination names a candidate blueprint."""
    stack = make_stack(
        settings=StepSettings(
            decision_mode=DecisionMode.INLINE, step_deadline_ms=5_000.0, sample_actions=True
        ),
        seed=seed,
    )
    seen = set()
    for step in range(40):
        packet = stack.packet(step)
        command = stack.controller.evaluate_step(packet)
        assert command.reason == InferenceOutcome.DECIDED
        if command.command_type != pb.COMMAND_TYPE_SEED:
            continue
        target = next(s for s in packet.seed_states if s.seed_id == command.target_seed_id)
        spec = next(a for a in ACTION_SPACE if a.seed_operation == command.seed.operation)
        assert target.stage in spec.seed_stages
        if command.seed.operation == pb.SEED_OP_GERMINATE:
            assert command.seed.blueprint_id in stack.builder.candidates
        else:
            assert command.seed.blueprint_id == target.blueprint_id
        seen.add(command.seed.operation)
    assert seen  # sampling reached some seed action


def test_hung_policy_returns_signed_noop_within_the_deadline_and_late_result_is_dropped() -> None:
    policy = HangingPolicy()
    stack = make_stack(policy=policy, settings=DEADLINE)
    policy.release.set()  # warm caches outside the assertion, whatever its outcome
    stack.controller.evaluate_step(stack.packet())
    assert stack.controller.wait_idle(10.0)
    policy.release.clear()
    policy.entered.clear()
    late_before = stack.controller.worker.stats.late_results_discarded
    stopped_before = stack.controller.worker.stats.late_forwards_stopped

    start = time.perf_counter()
    command = stack.controller.evaluate_step(stack.packet(2))
    elapsed = time.perf_counter() - start
    assert command.command_type == pb.COMMAND_TYPE_NO_OP
    assert command.reason == InferenceOutcome.TIMED_OUT
    assert elapsed < DEADLINE.step_deadline_ms / 1000 + 0.050
    stack.verify(command)
    assert policy.entered.wait(5.0)

    start = time.perf_counter()
    busy = stack.controller.evaluate_step(stack.packet(3))
    assert time.perf_counter() - start < DEADLINE.step_deadline_ms / 1000 + 0.050
    assert busy.reason == InferenceOutcome.BUSY
    assert busy.command_type == pb.COMMAND_TYPE_NO_OP
    stack.verify(busy)

    observed_before = stack.builder.normalizer.worker.counters.handled
    policy.release.set()
    assert stack.controller.wait_idle(10.0)
    assert stack.controller.worker.stats.late_results_discarded == late_before + 1
    # released after the step gave up on it: the forward stopped at its first layer
    assert stack.controller.worker.stats.late_forwards_stopped == stopped_before + 1
    assert stack.builder.normalizer.worker.counters.handled == observed_before
    stack.publisher.wait_idle(5.0)
    assert [r.reason for r in stack.sink.records[-2:]] == [
        InferenceOutcome.TIMED_OUT,
        InferenceOutcome.BUSY,
    ]


def test_hung_policy_first_call_never_blocks() -> None:
    policy = HangingPolicy()
    stack = make_stack(policy=policy, settings=DEADLINE)
    start = time.perf_counter()
    command = stack.controller.evaluate_step(stack.packet())
    assert time.perf_counter() - start < DEADLINE.step_deadline_ms / 1000 + 0.050
    assert command.reason == InferenceOutcome.TIMED_OUT
    policy.release.set()


def test_process_exits_while_the_worker_is_wedged() -> None:
    script = textwrap.dedent(
        """
        import threading
        from tamiyo_bus.policy.serving import ServingPolicy
        from tests.policy.helpers import SMALL, make_stack
        from tamiyo_bus.settings import DecisionMode, StepSettings

        class Wedged(ServingPolicy):
            def decide(self, graph, **kwargs):
                threading.Event().wait()

        settings = StepSettings(decision_mode=DecisionMode.INLINE, step_deadline_ms=5.0)
        stack = make_stack(policy=Wedged(SMALL), settings=settings)
        print(stack.controller.evaluate_step(stack.packet()).reason)
        print(stack.controller.evaluate_step(stack.packet()).reason)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY]


class BlockingCatalog:
    """Urza that never answers until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def lookup(self, blueprint_ids: Sequence[str]) -> Mapping[str, BlueprintMetadata]:
        self.release.wait()
        return {}


def test_urza_past_its_deadline_skips_enrichment() -> None:
    catalog = BlockingCatalog()
    settings = StepSettings(
        decision_mode=DecisionMode.INLINE, step_deadline_ms=5_000.0, inference_budget_ms=1_000.0
    )
    stack = make_stack(catalog=catalog, settings=settings, prefetch=False)
    start = time.perf_counter()
    command = stack.controller.evaluate_step(stack.packet())
    assert command.reason == InferenceOutcome.DECIDED_WITHOUT_URZA
    # Waited on Urza no longer than its deadline (plus inference), not the step deadline.
    assert time.perf_counter() - start < 2.0
    assert command.seed.operation != pb.SEED_OP_GERMINATE  # no metadata: no germination
    stack.verify(command)
    assert stack.catalog.stats.skipped_waits >= 1
    catalog.release.set()


def test_an_inference_error_is_a_signed_noop() -> None:
    stack = make_stack(policy=FailingPolicy(SMALL))
    command = stack.controller.evaluate_step(stack.packet())
    assert command.command_type == pb.COMMAND_TYPE_NO_OP
    assert command.reason == InferenceOutcome.FAILED
    stack.verify(command)
    assert stack.controller.stats.errors == 1


@dataclasses.dataclass(frozen=True)
class Reviewed:
    packet: pb.SystemStatePacket
    outcome: InferenceOutcome
    decision: PolicyDecision | None


class RecordingGate:
    def __init__(self) -> None:
        self.contexts: list[Reviewed] = []
        self.prepared: list[pb.SystemStatePacket] = []

    def inference_allowed(self) -> bool:
        return True

    def urza_wait_allowed(self) -> bool:
        return True

    def prepare(self, packet: pb.SystemStatePacket) -> None:
        self.prepared.append(packet)

    def review(
        self,
        proposal: pb.AdaptationCommand,
        packet: pb.SystemStatePacket,
        outcome: InferenceOutcome,
        decision: PolicyDecision | None,
    ) -> pb.AdaptationCommand:
        self.contexts.append(Reviewed(packet, outcome, decision))
        replaced = pb.AdaptationCommand()
        replaced.CopyFrom(proposal)
        replaced.ClearField("payload")
        replaced.command_type = pb.COMMAND_TYPE_NO_OP
        replaced.reason = "gated"
        return replaced


def test_the_gate_reviews_each_command_before_it_is_signed() -> None:
    gate = RecordingGate()
    stack = make_stack()
    controller = StepController(
        policy=stack.holder,
        builder=stack.builder,
        catalog=stack.catalog,
        signer=CommandSigner(stack.signer),
        settings=RELAXED,
        gate=gate,
    )
    controller.start()
    command = controller.evaluate_step(stack.packet())
    assert command.reason == "gated"
    assert command.command_type == pb.COMMAND_TYPE_NO_OP
    stack.verify(command)
    (context,) = gate.contexts
    assert gate.prepared == [context.packet]  # prepared while the policy decided
    assert context.outcome is InferenceOutcome.DECIDED
    assert context.decision is not None
    assert 0.0 <= context.decision.inference.expected_severity <= 1.0
    assert set(context.decision.graph.coverage) == {
        "global",
        "seed",
        "layer",
        "blueprint",
        "activation",
        "parameter",
    }


def test_each_decision_publishes_its_telemetry() -> None:
    stack = make_stack()
    command = stack.controller.evaluate_step(stack.packet())
    assert stack.publisher.wait_idle(5.0)
    (record,) = stack.sink.records
    assert record.command_id == command.command_id
    assert record.reason == InferenceOutcome.DECIDED
    assert record.build_ms > 0 and record.inference_ms > 0 and record.signing_ms > 0
    assert record.total_ms >= record.build_ms
    assert record.compile_state == ServingPolicy.compile_state
    assert set(record.feature_coverage) == set(context_types())
    assert record.expected_risk_severity is not None
    assert record.action == next(
        a.name
        for a in ACTION_SPACE
        if a.command_type == command.command_type
        and (a.seed_operation == command.seed.operation or not a.needs_seed)
    )


def context_types() -> tuple[str, ...]:
    return ("global", "seed", "layer", "blueprint", "activation", "parameter")


class BlockedSink(Collect):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def publish(self, telemetry: Any) -> None:
        self.entered.set()
        self.release.wait()
        super().publish(telemetry)


def test_a_full_telemetry_queue_drops_the_oldest_and_counts() -> None:
    stack = make_stack()
    stack.controller.evaluate_step(stack.packet())
    stack.publisher.wait_idle(5.0)
    (template,) = stack.sink.records
    sink = BlockedSink()
    publisher = telemetry_publisher(sink, queue_size=2)
    publisher.start()
    records = [_replace(template, command_id=f"c{i}") for i in range(5)]
    publisher.submit(records[0])
    assert sink.entered.wait(5.0)  # c0 is in the sink; the queue is empty
    for record in records[1:]:
        publisher.submit(record)  # never blocks
    assert publisher.counters.dropped == 2
    sink.release.set()
    assert publisher.wait_idle(5.0)
    assert [r.command_id for r in sink.records] == ["c0", "c3", "c4"]


def _replace(record: Any, **changes: Any) -> Any:
    return dataclasses.replace(record, **changes)


def test_a_swapped_policy_decides_the_next_step() -> None:
    stack = make_stack()
    first = stack.controller.evaluate_step(stack.packet())
    assert first.policy_version == 1
    newer = ServingPolicy(SMALL)
    running = stack.holder.current()
    with stack.holder.lock:
        stack.holder.install(
            RunningPolicy(newer, "test-policy", 2, running.architecture_id, running.registry_digest)
        )
    second = stack.controller.evaluate_step(stack.packet())
    assert second.policy_version == 2
    assert second.reason == InferenceOutcome.DECIDED


def test_the_step_path_refuses_a_module_it_cannot_run() -> None:
    stack = make_stack()
    holder = PolicyHolder(RunningPolicy(torch.nn.Linear(2, 2), "other", 1, "arch", "digest"))
    with pytest.raises(TypeError, match="decide"):
        StepController(
            policy=holder,
            builder=stack.builder,
            catalog=stack.catalog,
            signer=CommandSigner(stack.signer),
        )
