"""``evaluate_step``: Tamiyo's decision for one optimiser step, inside a hard deadline.

Read top to bottom, :meth:`StepController.evaluate_step` is the whole step path:

1. If the gate's inference breaker is open, answer NO_OP at once
   (``breaker.inference``): a failing or wedged policy is not run again until the
   breaker's cool-down lets a trial call through.
2. If the inference worker is still busy with an earlier step, answer NO_OP at once
   (``inference_busy``): nothing queues behind a slow decision.
3. Hand the packet to the worker (blueprint metadata under the Urza deadline, graph
   build, policy forward, masked choice) and wait at most until the step deadline,
   less the reserve for the steps below. While the gate's Urza breaker is open the
   worker does not wait on Urza at all: it decides from the cached metadata. Meanwhile
   the gate extracts the packet's own risk signals (time this thread would only wait).
4. Late: answer NO_OP (``timeout_inference``) at once. The worker's result, when it
   comes, is discarded; the worker never touches shared state itself, so a late
   decision cannot change anything. The forward stops before its next layer or
   per-type GEMM once the step has stopped waiting, so a late decision does not go on
   taking CPU time from the training step.
5. Turn the decision into a command, stamp it (unique time-ordered id, issue time,
   issuer, policy version, step, run, reason code), let the gate (the risk engine)
   review it, sign it.
6. Hand telemetry and the features for the running normalisation statistics to
   background threads through bounded queues, and return.

The caller's thread only ever waits on an Event with a timeout. The worker
(tamiyo_bus.worker) is a daemon thread joined only for a bounded time on ``close``, so
a wedged policy can neither stall the trainer nor keep the process from exiting.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import InferenceOutcome, PolicyDecision, propose_command
from tamiyo_bus.decision_telemetry import DecisionTelemetry
from tamiyo_bus.policy.actions import ACTION_SPACE, NO_OP_ACTION
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.network import InferenceCancelled
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.commands import stamp_command
from tamiyo_bus.security.policy_update import RunningPolicy
from tamiyo_bus.settings import StepSettings
from tamiyo_bus.urza_client import CachedCatalog
from tamiyo_bus.worker import QueueWorker, Worker

_NS_PER_MS = 1_000_000


class CommandSigner(Protocol):
    """Fills ``command.signature``; tamiyo_bus.security.commands.CommandSigner is one."""

    def sign(self, command: pb.AdaptationCommand) -> None: ...


class PolicySource(Protocol):
    """The running policy; tamiyo_bus.security.policy_update.PolicyHolder is one."""

    def current(self) -> RunningPolicy: ...


class CommandGate(Protocol):
    """Reviews every command before it is signed (the risk engine plugs in here)."""

    def inference_allowed(self) -> bool:
        """Asked once per step before the policy runs: False while the inference
        breaker is open (the step then answers NO_OP ``breaker.inference``)."""
        ...

    def urza_wait_allowed(self) -> bool:
        """Asked once per step: False while the Urza breaker is open (the step then
        decides from cached blueprint metadata without waiting on Urza)."""
        ...

    def prepare(self, packet: pb.SystemStatePacket) -> None:
        """Called once the policy is deciding on ``packet``, before the step waits for
        it: review what does not depend on the decision now, in time the caller's
        thread would spend waiting."""
        ...

    def review(
        self,
        proposal: pb.AdaptationCommand,
        packet: pb.SystemStatePacket,
        outcome: InferenceOutcome,
        decision: PolicyDecision | None,
    ) -> pb.AdaptationCommand:
        """The command to sign: ``proposal`` judged against ``packet``; ``decision`` is
        None when the policy did not decide in time."""
        ...


@dataclass(slots=True)
class StepStats:
    decisions: int = 0
    timeouts: int = 0
    busy: int = 0
    errors: int = 0
    refused: int = 0  # steps the inference breaker kept the policy from running
    late_results_discarded: int = 0
    late_forwards_stopped: int = 0  # of those, forwards stopped between layers


@dataclass(eq=False, slots=True)
class _Job:
    packet: pb.SystemStatePacket
    deadline_ns: int
    urza_wait: bool
    done: threading.Event
    finished: bool = False
    abandoned: bool = False
    outcome: PolicyDecision | BaseException | None = None


class StepController:
    """Tamiyo on the step path: one decision per optimiser step, never late."""

    def __init__(
        self,
        *,
        policy: PolicySource,
        builder: GraphBuilder,
        catalog: CachedCatalog,
        signer: CommandSigner,
        settings: StepSettings | None = None,
        telemetry: QueueWorker[DecisionTelemetry] | None = None,
        gate: CommandGate | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        _serving(policy.current())
        self.settings = settings or StepSettings()
        self._policy = policy
        self._builder = builder
        self._catalog = catalog
        self._signer = signer
        self._telemetry = telemetry
        self._gate = gate
        self._generator = generator
        self.stats = StepStats()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._job: _Job | None = None
        self._worker = Worker("tamiyo-inference", self._run_job)

    def start(self) -> None:
        """Start the inference worker (before the first step)."""
        self._worker.start()

    def close(self) -> bool:
        """Stop the inference worker after the decision in flight (bounded wait)."""
        return self._worker.close()

    # ------------------------------------------------------------ the step path

    def evaluate_step(self, packet: pb.SystemStatePacket) -> pb.AdaptationCommand:
        """The signed command for this step; NO_OP on any breach of the deadline."""
        started = time.perf_counter_ns()
        s = self.settings
        deadline = started + int((s.step_deadline_ms - s.finish_reserve_ms) * _NS_PER_MS)
        if self._gate is not None and not self._gate.inference_allowed():
            self.stats.refused += 1
            return self._finish(packet, started, None, InferenceOutcome.REFUSED)
        urza_wait = self._gate is None or self._gate.urza_wait_allowed()
        job = self._submit(packet, deadline, urza_wait)
        if job is None:
            self.stats.busy += 1
            return self._finish(packet, started, None, InferenceOutcome.BUSY)
        if self._gate is not None:
            self._gate.prepare(packet)
        job.done.wait(max(deadline - time.perf_counter_ns(), 0) / 1e9)
        outcome = self._collect(job)
        if outcome is None:
            self.stats.timeouts += 1
            return self._finish(packet, started, None, InferenceOutcome.TIMED_OUT)
        if isinstance(outcome, BaseException):
            self.stats.errors += 1
            return self._finish(packet, started, None, InferenceOutcome.FAILED)
        decided = (
            InferenceOutcome.DECIDED_WITHOUT_URZA
            if outcome.urza_timed_out
            else InferenceOutcome.DECIDED
        )
        return self._finish(packet, started, outcome, decided)

    def _finish(
        self,
        packet: pb.SystemStatePacket,
        started_ns: int,
        decision: PolicyDecision | None,
        outcome: InferenceOutcome,
    ) -> pb.AdaptationCommand:
        gate_start = time.perf_counter_ns()
        if decision is None:
            command = pb.AdaptationCommand(version=1, command_type=pb.COMMAND_TYPE_NO_OP)
            version = self._policy.current().version
        else:
            command = propose_command(decision, self.settings.circuit_breaker_name)
            version = decision.policy_version
        stamp_command(command, self.settings.issued_by)
        command.reason = outcome
        command.policy_version = version
        command.global_step = packet.global_step
        command.training_run_id = packet.training_run_id
        risk_start = time.perf_counter_ns()
        if self._gate is not None:
            command = self._gate.review(command, packet, outcome, decision)
        sign_start = time.perf_counter_ns()
        self._signer.sign(command)
        done = time.perf_counter_ns()
        self.stats.decisions += 1
        if decision is not None:
            self._builder.normalizer.observe(decision.graph.raw)
        if self._telemetry is not None:
            self._telemetry.submit(
                _telemetry(command, decision, started_ns, gate_start, risk_start, sign_start, done)
            )
        return command

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait (off the step path: shutdown, tests, benchmarks) until no decision is in
        flight; False if one still is after ``timeout_s``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._job is None, timeout_s)

    # ------------------------------------------------------------ the worker

    def _submit(
        self, packet: pb.SystemStatePacket, deadline_ns: int, urza_wait: bool
    ) -> _Job | None:
        with self._lock:
            if self._job is not None:
                return None
            # The worker may outlive this call; it reads its own copy, never the
            # caller's packet, which the trainer is free to reuse.
            snapshot = pb.SystemStatePacket()
            snapshot.CopyFrom(packet)
            self._job = job = _Job(snapshot, deadline_ns, urza_wait, threading.Event())
        self._worker.wake()
        return job

    def _collect(self, job: _Job) -> PolicyDecision | BaseException | None:
        """The job's outcome if it finished; otherwise abandon it (its result will be
        discarded) and return None."""
        with self._lock:
            if job.finished:
                return job.outcome
            job.abandoned = True
            return None

    def _run_job(self) -> None:
        with self._lock:
            job = self._job
        if job is None:
            return
        outcome: PolicyDecision | BaseException
        try:
            outcome = self._decide(job)
        except Exception as error:
            outcome = error
        with self._lock:
            job.finished = True
            if job.abandoned:
                self.stats.late_results_discarded += 1
                self.stats.late_forwards_stopped += isinstance(outcome, InferenceCancelled)
            else:
                job.outcome = outcome
            self._job = None
            self._idle.notify_all()
        job.done.set()

    def _decide(self, job: _Job) -> PolicyDecision:
        """Runs on the worker thread; reads shared state, never writes it."""
        start = time.perf_counter_ns()
        s = self.settings
        packet = job.packet
        blueprint_ids = self._builder.candidates + tuple(
            seed.blueprint_id for seed in packet.seed_states if seed.blueprint_id
        )
        slack_ns = job.deadline_ns - start - int(s.inference_budget_ms * _NS_PER_MS)
        wait_s = min(s.urza_deadline_ms / 1000.0, max(slack_ns, 0) / 1e9) if job.urza_wait else 0.0
        resolution = self._catalog.resolve(tuple(dict.fromkeys(blueprint_ids)), wait_s)
        graph = self._builder.build(packet, resolution.metadata)
        built = time.perf_counter_ns()
        running = self._policy.current()
        inference = _serving(running).decide(
            graph,
            greedy=not s.sample_actions,
            generator=self._generator,
            cancelled=lambda: job.abandoned,
        )
        return PolicyDecision(
            policy_version=running.version,
            inference=inference,
            graph=graph,
            urza_timed_out=resolution.timed_out,
            urza_wait_allowed=job.urza_wait,
            blueprints=resolution.metadata,
            build_ms=(built - start) / _NS_PER_MS,
            inference_ms=(time.perf_counter_ns() - built) / _NS_PER_MS,
        )


def _serving(running: RunningPolicy) -> ServingPolicy:
    if not isinstance(running.module, ServingPolicy):
        raise TypeError(f"the step path runs a ServingPolicy, not {type(running.module).__name__}")
    return running.module


def _telemetry(
    command: pb.AdaptationCommand,
    decision: PolicyDecision | None,
    started_ns: int,
    gate_start_ns: int,
    risk_start_ns: int,
    sign_start_ns: int,
    done_ns: int,
) -> DecisionTelemetry:
    if decision is None:
        action = ACTION_SPACE[NO_OP_ACTION].name
    else:
        action = decision.inference.action.spec.name
    return DecisionTelemetry(
        command_id=command.command_id,
        training_run_id=command.training_run_id,
        global_step=command.global_step,
        policy_version=command.policy_version,
        command_type=command.command_type,
        action=action,
        reason=command.reason,
        total_ms=(done_ns - started_ns) / _NS_PER_MS,
        build_ms=decision.build_ms if decision else 0.0,
        inference_ms=decision.inference_ms if decision else 0.0,
        gating_ms=(sign_start_ns - gate_start_ns) / _NS_PER_MS,
        risk_ms=(sign_start_ns - risk_start_ns) / _NS_PER_MS,
        signing_ms=(done_ns - sign_start_ns) / _NS_PER_MS,
        compile_state=ServingPolicy.compile_state,
        feature_coverage=dict(decision.graph.coverage) if decision else {},
        expected_risk_severity=decision.inference.expected_severity if decision else None,
        urza_timed_out=decision.urza_timed_out if decision else False,
    )
