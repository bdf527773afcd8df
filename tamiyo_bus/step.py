"""``evaluate_step``: Tamiyo on the trainer's step path, which never waits for the policy.

The trainer asks ``wants_state(step)`` every step (a few attribute reads) and only on
the steps it answers True builds the step's SystemStatePacket and calls
``evaluate_step``; every other step costs Tamiyo nothing. How a decision reaches a step
depends on ``StepSettings.decision_mode`` (docs/step-path.md):

- ``ahead`` (default): the packet goes to the inference worker and ``evaluate_step``
  returns at once with the decision the worker finished for an earlier packet
  (normally the previous decision point's), reviewed by the risk gate against *this*
  packet and signed now. A decision older than ``max_decision_age_steps`` is dropped
  (``stale_decision``); while the worker is busy the newest packet replaces a waiting
  one. The policy's latency bounds how often Tamiyo decides, never the step.
- ``inline``: the worker decides on this packet and the step waits up to
  ``step_deadline_ms``; a miss answers NO_OP (``timeout_inference``) and the late
  result is dropped (its forward stops at its next layer).
- ``synchronous``: the step waits for the decision on this packet, however long it
  takes: the same seed gives the same commands (research runs and tests).

Read top to bottom, :meth:`StepController.evaluate_step` is the whole step path:
collect what the worker has for this step, hand this packet to the worker when the
cadence says so, and turn the outcome into a command: stamp it (id, time, issuer,
policy version, the step decided on and the step applied at, run, reason code), let the
gate (the risk engine) review it, and sign it unless it is a NO_OP (a NO_OP changes
nothing, so it is neither signed nor verified). Telemetry and the features for the
running normalisation go to background workers through bounded queues.

How often the worker gets a packet is the cadence (tamiyo_bus.cadence): every
``decision_every_steps`` steps, or, when that is 0, the interval that keeps the
measured cost of a decision within ``max_step_share`` of the host's step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, cast

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.cadence import Cadence
from tamiyo_bus.decision import InferenceOutcome, PolicyDecision, propose_command
from tamiyo_bus.decision_telemetry import DecisionTelemetry
from tamiyo_bus.experience.recorder import ExperienceRecorder
from tamiyo_bus.experience.steps import StepOutcome
from tamiyo_bus.inference_worker import InferenceWorker, Job
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.actions import ACTION_SPACE, NO_OP_ACTION
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.serving import DecisionPolicy, ServingPolicy
from tamiyo_bus.risk import Category
from tamiyo_bus.security.commands import stamp_command
from tamiyo_bus.security.policy_update import RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.urza_client import CachedCatalog
from tamiyo_bus.worker import QueueWorker

_NS_PER_MS = 1_000_000
SYNCHRONOUS_WAIT_S = 60.0  # synchronous mode: longest wait for the statistics update
HOST_STEP_METRIC = "step_latency_ms"  # the trainer's own step time, in the packet


class CommandSigner(Protocol):
    """Fills ``command.signature``; tamiyo_bus.security.commands.CommandSigner is one."""

    def sign(self, command: pb.AdaptationCommand) -> None: ...


class PolicySource(Protocol):
    """The running policy; tamiyo_bus.security.policy_update.PolicyHolder is one."""

    def current(self) -> RunningPolicy: ...


class CommandGate(Protocol):
    """Reviews every command before it is signed (the risk engine plugs in here)."""

    def inference_allowed(self) -> bool:
        """Asked before the policy is given a packet: False while the inference breaker
        is open (the step then answers NO_OP ``breaker.inference``)."""
        ...

    def urza_wait_allowed(self) -> bool:
        """False while the Urza breaker is open (the worker then decides from cached
        blueprint metadata without waiting on Urza)."""
        ...

    def prepare(self, packet: pb.SystemStatePacket) -> None:
        """Called while a step waits for the policy to decide on ``packet``: review what
        does not depend on the decision now, in time the step would only wait."""
        ...

    def review(
        self,
        proposal: pb.AdaptationCommand,
        packet: pb.SystemStatePacket,
        outcome: InferenceOutcome,
        decision: PolicyDecision | None,
    ) -> pb.AdaptationCommand:
        """The command to sign: ``proposal`` judged against ``packet``; ``decision`` is
        None when the policy did not decide."""
        ...


@dataclass(slots=True)
class StepStats:
    calls: int = 0  # evaluate_step calls
    commands: int = 0  # commands returned (decisions and NO_OPs with a reason)
    decided: int = 0  # of those, decided by the policy
    submitted: int = 0  # packets handed to the worker
    timeouts: int = 0  # inline: deadline missed
    busy: int = 0  # inline: the worker was still busy
    stale: int = 0  # ahead: dropped for their age, or abandoned while too old
    errors: int = 0
    refused: int = 0  # decision points the inference breaker kept the policy from


class StepController:
    """Tamiyo on the step path; ``start`` it before the first step."""

    def __init__(
        self,
        *,
        policy: PolicySource,
        builder: GraphBuilder,
        catalog: CachedCatalog,
        signer: CommandSigner,
        settings: StepSettings | None = None,
        telemetry: QueueWorker[DecisionTelemetry] | None = None,
        experience: ExperienceRecorder | None = None,
        gate: CommandGate | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        _decider(policy.current())
        self.settings = s = settings or StepSettings()
        self._policy = policy
        self._builder = builder
        self._catalog = catalog
        self._signer = signer
        self._telemetry = telemetry
        self._experience = experience
        self._gate = gate
        self._generator = generator
        self.stats = StepStats()
        self.cadence = Cadence.of(
            s.max_step_share, s.decision_every_steps, s.max_decision_every_steps, s.cost_smoothing
        )
        self.worker = InferenceWorker(self._decide)
        self._next_submit_step = 0
        self._caller_ns = 0  # evaluate_step's time since the last decision

    def start(self) -> None:
        """Start the inference worker (before the first step)."""
        self.worker.start()

    def close(self) -> bool:
        """Stop the inference worker after the decision in flight (bounded wait)."""
        return self.worker.close()

    # ------------------------------------------------------------ the step path

    def wants_state(self, step: int) -> bool:
        """Whether ``evaluate_step`` has work at ``step``: a decision to hand over, or a
        packet to hand the worker. Called every step; costs a few attribute reads."""
        return step >= self._next_submit_step or self.worker.has_posted()

    def evaluate_step(self, packet: pb.SystemStatePacket) -> pb.AdaptationCommand | None:
        """The command for this step (signed unless a NO_OP), or None when there is
        nothing to hand over. Inline and synchronous, every call decides on ``packet``
        (``wants_state`` is what keeps to the cadence); ahead, ``packet`` goes to the
        worker only when the cadence is due."""
        started = time.perf_counter_ns()
        self.stats.calls += 1
        self.cadence.observe_host_step(packet.training_metrics.get(HOST_STEP_METRIC, 0.0))
        mode = self.settings.decision_mode
        if mode is DecisionMode.AHEAD:
            outcome, decision = self._collect_ahead(packet)
            if packet.global_step >= self._next_submit_step:
                submitted = self._submit(packet, deadline_ns=None, posts_result=True)
                if decision is None and isinstance(submitted, InferenceOutcome):
                    outcome = submitted  # the breaker kept the policy from this packet
        else:
            outcome, decision = self._decide_now(packet, started, mode)
        command = None if outcome is None else self._finish(packet, started, decision, outcome)
        self._caller_ns += time.perf_counter_ns() - started
        if decision is not None:
            # What a decision costs the host: the worker's CPU time and every moment the
            # trainer's thread spent in evaluate_step since the previous decision.
            self.cadence.observe_decision(decision.cpu_ms + self._caller_ns / _NS_PER_MS)
            self._caller_ns = 0
        return command

    def _collect_ahead(
        self, packet: pb.SystemStatePacket
    ) -> tuple[InferenceOutcome | None, PolicyDecision | None]:
        """The posted decision for this step, judged by its age. Work on states too old
        to be used is stopped; while the worker is late with one (a slow or wedged
        policy) the step says so (``stale_decision``), so the breaker sees it."""
        oldest = packet.global_step - self.settings.max_decision_age_steps
        late = self.worker.late_before(oldest)
        job = self.worker.take_posted()
        if job is None:
            if late:
                self.stats.stale += 1
                return InferenceOutcome.STALE, None
            return None, None
        if isinstance(job.outcome, BaseException):
            self.stats.errors += 1
            return InferenceOutcome.FAILED, None
        assert job.outcome is not None
        if job.step < oldest:
            self.stats.stale += 1
            return InferenceOutcome.STALE, None
        return _decided(job.outcome), job.outcome

    def _decide_now(
        self, packet: pb.SystemStatePacket, started_ns: int, mode: DecisionMode
    ) -> tuple[InferenceOutcome, PolicyDecision | None]:
        """Inline and synchronous modes: the decision on this very packet."""
        s = self.settings
        deadline: int | None = None
        if mode is DecisionMode.INLINE:
            deadline = started_ns + int((s.step_deadline_ms - s.finish_reserve_ms) * _NS_PER_MS)
        elif self._builder.normalizer.worker.counters.submitted:
            # The next decision must see every statistics update of the previous ones.
            self._builder.normalizer.wait_idle(SYNCHRONOUS_WAIT_S)
        job = self._submit(packet, deadline_ns=deadline, posts_result=False)
        if isinstance(job, InferenceOutcome):
            return job, None
        if self._gate is not None:
            self._gate.prepare(packet)
        wait_s = None if deadline is None else max(deadline - time.perf_counter_ns(), 0) / 1e9
        job.done.wait(wait_s)
        outcome = self.worker.collect(job)
        if outcome is None:
            self.stats.timeouts += 1
            return InferenceOutcome.TIMED_OUT, None
        if isinstance(outcome, BaseException):
            self.stats.errors += 1
            return InferenceOutcome.FAILED, None
        return _decided(outcome), outcome

    def _submit(
        self, packet: pb.SystemStatePacket, *, deadline_ns: int | None, posts_result: bool
    ) -> Job | InferenceOutcome:
        """Hand a copy of ``packet`` to the worker (the trainer may reuse its own), or say
        why not: REFUSED by the inference breaker, BUSY (inline: the worker still runs).
        The next submission is due a cadence later either way."""
        self._next_submit_step = packet.global_step + self.cadence.steps
        if self._gate is not None and not self._gate.inference_allowed():
            self.stats.refused += 1
            return InferenceOutcome.REFUSED
        urza_wait = self._gate is None or self._gate.urza_wait_allowed()
        snapshot = pb.SystemStatePacket()
        snapshot.CopyFrom(packet)
        job = Job(snapshot, deadline_ns, urza_wait, posts_result)
        if not self.worker.submit(job, replace_waiting=posts_result):
            self.stats.busy += 1
            return InferenceOutcome.BUSY
        self.stats.submitted += 1
        return job

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
            command.policy_version = self._policy.current().version
            command.decision_step = packet.global_step
        else:
            command = propose_command(
                decision.inference, decision.graph, self.settings.circuit_breaker_name
            )
            command.policy_version = decision.policy_version
            command.decision_step = decision.step
        stamp_command(command, self.settings.issued_by)
        command.reason = outcome
        command.global_step = packet.global_step
        command.training_run_id = packet.training_run_id
        risk_start = time.perf_counter_ns()
        if self._gate is not None:
            command = self._gate.review(command, packet, outcome, decision)
        sign_start = time.perf_counter_ns()
        if command.command_type != pb.COMMAND_TYPE_NO_OP:
            self._signer.sign(command)
        done = time.perf_counter_ns()
        self.stats.commands += 1
        if decision is not None:
            self.stats.decided += 1
            self._builder.normalizer.observe(decision.graph.raw)
            if self._experience is not None:
                self._experience.record(command.training_run_id, decision, _step_outcome(command))
        if self._telemetry is not None:
            times = _Times(started_ns, gate_start, risk_start, sign_start, done)
            self._telemetry.submit(_telemetry(command, decision, times, self.cadence.steps))
        return command

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait (off the step path: shutdown, tests, benchmarks) until no decision is in
        flight; False if one still is after ``timeout_s``."""
        return self.worker.wait_idle(timeout_s)

    # ------------------------------------------------------------ the worker

    def _decide(self, job: Job) -> PolicyDecision:
        """Runs on the worker thread; reads shared state, never writes it."""
        start = time.perf_counter_ns()
        cpu_start = time.thread_time_ns()
        s = self.settings
        packet = job.packet
        blueprint_ids = self._builder.candidates + tuple(
            seed.blueprint_id for seed in packet.seed_states if seed.blueprint_id
        )
        wait_s = s.urza_deadline_ms / 1000.0 if job.urza_wait else 0.0
        if job.deadline_ns is not None and job.urza_wait:
            slack_ns = job.deadline_ns - start - int(s.inference_budget_ms * _NS_PER_MS)
            wait_s = min(wait_s, max(slack_ns, 0) / 1e9)
        resolution = self._catalog.resolve(tuple(dict.fromkeys(blueprint_ids)), wait_s)
        graph = self._builder.build(packet, resolution.metadata)
        built = time.perf_counter_ns()
        running = self._policy.current()
        inference = _decider(running).decide(
            graph,
            greedy=not s.sample_actions,
            generator=self._generator,
            cancelled=lambda: job.abandoned,
        )
        return PolicyDecision(
            step=job.step,
            policy_version=running.version,
            architecture_id=running.architecture_id,
            inference=inference,
            graph=graph,
            urza_timed_out=resolution.timed_out,
            urza_wait_allowed=job.urza_wait,
            blueprints=resolution.metadata,
            build_ms=(built - start) / _NS_PER_MS,
            inference_ms=(time.perf_counter_ns() - built) / _NS_PER_MS,
            cpu_ms=(time.thread_time_ns() - cpu_start) / _NS_PER_MS,
            progress=Progress.of_packet(packet),
        )


def _decided(decision: PolicyDecision) -> InferenceOutcome:
    if decision.urza_timed_out:
        return InferenceOutcome.DECIDED_WITHOUT_URZA
    return InferenceOutcome.DECIDED


def _step_outcome(command: pb.AdaptationCommand) -> StepOutcome:
    category = command.annotations.get("risk_category", Category.GREEN.name)
    return StepOutcome(
        command_id=command.command_id,
        applied_step=command.global_step,
        acted=command.command_type != pb.COMMAND_TYPE_NO_OP,
        risk_category=int(Category.__members__.get(category, Category.GREEN)),
    )


def _decider(running: RunningPolicy) -> DecisionPolicy:
    """The running module as the step path runs it: anything that decides on a graph."""
    decide = getattr(running.module, "decide", None)
    if not callable(decide):
        raise TypeError(
            f"the step path runs a policy with decide(), not {type(running.module).__name__}"
        )
    return cast(DecisionPolicy, running.module)


@dataclass(frozen=True, slots=True)
class _Times:
    started_ns: int
    gate_start_ns: int
    risk_start_ns: int
    sign_start_ns: int
    done_ns: int


def _telemetry(
    command: pb.AdaptationCommand,
    decision: PolicyDecision | None,
    t: _Times,
    cadence_steps: int,
) -> DecisionTelemetry:
    if decision is None:
        action = ACTION_SPACE[NO_OP_ACTION].name
    else:
        action = decision.inference.action.spec.name
    return DecisionTelemetry(
        command_id=command.command_id,
        training_run_id=command.training_run_id,
        global_step=command.global_step,
        decision_step=command.decision_step,
        cadence_steps=cadence_steps,
        policy_version=command.policy_version,
        command_type=command.command_type,
        action=action,
        reason=command.reason,
        total_ms=(t.done_ns - t.started_ns) / _NS_PER_MS,
        build_ms=decision.build_ms if decision else 0.0,
        inference_ms=decision.inference_ms if decision else 0.0,
        gating_ms=(t.sign_start_ns - t.gate_start_ns) / _NS_PER_MS,
        risk_ms=(t.sign_start_ns - t.risk_start_ns) / _NS_PER_MS,
        signing_ms=(t.done_ns - t.sign_start_ns) / _NS_PER_MS,
        compile_state=ServingPolicy.compile_state,
        feature_coverage=dict(decision.graph.coverage) if decision else {},
        expected_risk_severity=decision.inference.expected_severity if decision else None,
        urza_timed_out=decision.urza_timed_out if decision else False,
    )
