"""Kasmina: verifies and applies Tamiyo's commands, runs the seed lifecycle, advances
alpha and flushes per-step telemetry.

The trainer calls, once per optimiser step and in this order:

1. ``step_seeds()`` after the host's optimiser step: seeds' gradient norms, health
   check, the seeds' own optimiser steps;
2. ``fill_seed_states(packet)`` while it builds the SystemStatePacket;
3. ``apply_command(command)`` with whatever ``evaluate_step`` returned (on decision
   steps);
4. ``advance_alpha()``;
5. ``finalize_step(step, training_loss)``: isolation results, scheduled transitions,
   telemetry handed to the outbox.

Every command is verified (signature, freshness, replay: ``CommandVerifier``) before
anything else looks at it; a rejected command changes nothing. A restarted Kasmina
refuses every command issued before it started (its replay cache did not survive).
A verified command for another run (or none), for a step outside
``command_step_window_steps`` of the current one, or whose target, stage or gate does
not allow it is *refused*, and also changes nothing. None of these calls does IO or
waits on another thread.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from oona.errors import RejectedMessage
from tamiyo_bus.kasmina.blending import alpha_at
from tamiyo_bus.kasmina.lifecycle import (
    ACTIVE,
    HAS_MODULE,
    TRAINABLE,
    GateInputs,
    check_gate,
    next_stage,
)
from tamiyo_bus.kasmina.rules import (
    SCHEDULED_REASON,
    Refusal,
    blend_refusal,
    germination_refusal,
    learning_rate_scale_refusal,
    paused_refusal,
    scheduled_stage,
    swept_by,
    transition_refusal,
)
from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.kasmina.site import Seed, SeedSite
from tamiyo_bus.kasmina.telemetry import (
    LifecycleEvent,
    SeedSnapshot,
    StepTelemetry,
    TelemetryOutbox,
)
from tamiyo_bus.reports.windows import SEED_PARAMETERS_METRIC
from tamiyo_bus.security.commands import CommandVerifier
from tamiyo_bus.urza.adapters import INIT_SCALE, build_adapter
from tamiyo_bus.urza.blueprint import Blueprint
from tamiyo_bus.urza.catalogue import LR_RATIO

S = pb.SeedLifecycleStage
# Stages with no per-step work: no schedule, no blending, no isolation to check.
_RESTING = frozenset({pb.SEED_STAGE_DORMANT, pb.SEED_STAGE_FOSSILIZED})


class BlueprintSource(Protocol):
    """Where Kasmina finds a blueprint's constructor: Urza's store (``get`` raises
    KeyError for an unknown id)."""

    def get(self, blueprint_id: str) -> Blueprint: ...


class LearningRates(Protocol):
    """The trainer's one LR controller, which also owns the seeds' learning rates."""

    @property
    def learning_rate(self) -> float: ...

    def attach(self, optimizer: torch.optim.Optimizer, ratio: float) -> None: ...

    def detach(self, optimizer: torch.optim.Optimizer) -> None: ...

    def apply_scale(self, scale: float) -> float: ...


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What became of one command.

    ``verified``: it passed signature, freshness and replay checks. ``applied``: it
    took effect (a NO_OP counts). ``outcome`` is ``applied`` or the reason it did not.
    """

    command_id: str
    verified: bool
    applied: bool
    outcome: str
    detail: str = ""


@dataclass
class KasminaStats:
    """Counters since start; read by the demo summary and the tests."""

    verified: int = 0
    applied: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    finalized: int = 0
    isolation_checks: int = 0
    isolation_violations: int = 0
    transitions: int = 0
    breaker_commands: int = 0


class _Refusal(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _refuse_if(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise _Refusal(refusal.reason, refusal.detail)


def _percentile(values: deque[float], q: float) -> float:
    return float(np.percentile(np.fromiter(values, dtype=np.float64), q)) if values else 0.0


class Kasmina:
    """The seed executor for one host model and training run."""

    def __init__(
        self,
        sites: Sequence[SeedSite],
        *,
        blueprints: BlueprintSource,
        verifier: CommandVerifier,
        learning_rates: LearningRates,
        host_parameters: int,
        training_run_id: str,
        device: torch.device,
        settings: KasminaSettings | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings or KasminaSettings()
        self.blueprints = blueprints
        self.verifier = verifier
        self.learning_rates = learning_rates
        self.host_parameters = host_parameters
        self.training_run_id = training_run_id
        self.device = device
        self._clock_ns = clock_ns
        verifier.refuse_issued_before(clock_ns())
        self.sites = tuple(sites)
        self.seeds: dict[str, Seed] = {}
        self._site_of: dict[str, SeedSite] = {}
        for site in self.sites:
            for k in range(self.settings.slots_per_layer):
                seed = Seed(f"{site.layer_id}.s{k}", site.layer_id, site.depth)
                site.seeds.append(seed)
                self.seeds[seed.seed_id] = seed
                self._site_of[seed.seed_id] = site
        # Seeds with per-step work (neither DORMANT nor FOSSILIZED), kept by ``_move``: a
        # step with none of them (the common case) costs the trainer almost nothing.
        self._stirring: tuple[Seed, ...] = ()
        self.step = 0
        self.loss_ema = math.nan
        self.paused_until_step = -1
        self.stats = KasminaStats()
        self.history: list[LifecycleEvent] = []
        self.outbox = TelemetryOutbox(self.settings.telemetry_queue_max_items)
        self._events: list[LifecycleEvent] = []
        self._apply_ms = 0.0
        self._finalize_ms = 0.0
        self._last_violations = 0
        self.apply_latencies_ms: deque[float] = deque(maxlen=self.settings.latency_window_steps)
        self.finalize_latencies_ms: deque[float] = deque(maxlen=self.settings.latency_window_steps)

    # ----------------------------------------------------------------- views

    @property
    def live_seeds(self) -> list[Seed]:
        return [s for s in self.seeds.values() if s.stage in HAS_MODULE]

    def apply_latency_p95_ms(self) -> float:
        return _percentile(self.apply_latencies_ms, 95)

    def finalize_latency_p95_ms(self) -> float:
        return _percentile(self.finalize_latencies_ms, 95)

    def step_metrics(self, *, timings: bool = True) -> dict[str, float]:
        """Run-level figures for the packet's ``training_metrics``, under the names the
        risk engine reads: the isolation violations found by the last ``finalize_step``
        (the culled seed no longer reports its own) and, with ``timings``, the last
        apply and finalize latencies."""
        metrics = {"isolation_violations": float(self._last_violations)}
        if timings:
            metrics["kasmina_apply_latency_ms"] = (
                self.apply_latencies_ms[-1] if self.apply_latencies_ms else 0.0
            )
            metrics["kasmina_finalize_latency_ms"] = self._finalize_ms
        return metrics

    def fill_seed_states(self, packet: pb.SystemStatePacket) -> None:
        """Append every slot's SeedState (dormant ones too: they are where seeds grow)."""
        for seed in self.seeds.values():
            state = packet.seed_states.add(
                seed_id=seed.seed_id,
                stage=seed.stage,
                layer_depth=seed.layer_depth,
                layer_id=seed.layer_id,
                alpha=seed.alpha,
                blueprint_id=seed.blueprint_id,
            )
            if seed.stage in HAS_MODULE:
                state.gradient_norm = seed.gradient_norm
                state.age = self.step - seed.germinated_step
                state.risk_score = seed.blueprint_risk
                if seed.optimizer is not None:
                    state.learning_rate = float(seed.optimizer.param_groups[0]["lr"])
                metrics = state.metrics
                metrics["isolation_violations"] = float(seed.isolation_violations)
                metrics[SEED_PARAMETERS_METRIC] = float(seed.parameters)
                if math.isfinite(seed.blend_baseline_loss):
                    metrics["loss_delta"] = self.loss_ema - seed.blend_baseline_loss

    # -------------------------------------------------------------- commands

    def apply_command(self, command: pb.AdaptationCommand) -> ApplyResult:
        """Verify, then apply ``command``; a rejected or refused command changes nothing.

        A NO_OP changes nothing whoever sent it, so it is taken without verification
        (Tamiyo does not sign one)."""
        started = time.perf_counter()
        if command.command_type == pb.COMMAND_TYPE_NO_OP:
            self.stats.applied += 1
            return ApplyResult(command.command_id, False, True, "applied")
        try:
            self.verifier.verify(command)
        except RejectedMessage as rejection:
            self.stats.rejected[rejection.reason] += 1
            result = ApplyResult(
                command.command_id, False, False, rejection.reason, rejection.detail
            )
        else:
            self.stats.verified += 1
            try:
                self._dispatch(command)
            except _Refusal as refusal:
                self.stats.refused[refusal.reason] += 1
                result = ApplyResult(
                    command.command_id, True, False, refusal.reason, refusal.detail
                )
            else:
                self.stats.applied += 1
                result = ApplyResult(command.command_id, True, True, "applied")
        self._apply_ms = (time.perf_counter() - started) * 1000.0
        self.apply_latencies_ms.append(self._apply_ms)
        return result

    def _dispatch(self, command: pb.AdaptationCommand) -> None:
        if command.training_run_id != self.training_run_id:
            raise _Refusal("wrong_run", f"command for run {command.training_run_id!r}")
        if abs(command.global_step - self.step) > self.settings.command_step_window_steps:
            raise _Refusal(
                "wrong_step", f"issued for step {command.global_step}, applied at {self.step}"
            )
        kind = command.command_type
        if kind == pb.COMMAND_TYPE_NO_OP:
            return
        if kind == pb.COMMAND_TYPE_SEED:
            self._seed_command(command)
        elif kind == pb.COMMAND_TYPE_OPTIMIZER:
            _refuse_if(learning_rate_scale_refusal(command))
            self.learning_rates.apply_scale(command.optimizer.learning_rate_scale)
        elif kind == pb.COMMAND_TYPE_PAUSE:
            self.paused_until_step = self.step + self.settings.pause_steps
        elif kind == pb.COMMAND_TYPE_CIRCUIT_BREAKER:
            # Breakers and conservative mode are Tamiyo's state (the risk engine keeps
            # them, with their hysteresis); she stops issuing what they forbid. Kasmina
            # keeping a copy would need an exit it is never sent.
            self.stats.breaker_commands += 1
        elif kind == pb.COMMAND_TYPE_EMERGENCY:
            for seed in self.seeds.values():
                if swept_by(kind, seed.stage):
                    self._move(seed, pb.SEED_STAGE_CULLED, "emergency")
        elif kind == pb.COMMAND_TYPE_ROLLBACK:
            self._rollback(command.target_seed_id)
        else:
            raise _Refusal("invalid", f"command type {command.command_type}")

    def _rollback(self, target_seed_id: str) -> None:
        """Cull the target seed, or, with none named, every seed that is blended in."""
        if target_seed_id:
            seed = self._target(target_seed_id)
            if seed.stage not in ACTIVE:
                raise _Refusal("wrong_stage", f"{seed.seed_id} is {S.Name(seed.stage)}")
            self._move(seed, pb.SEED_STAGE_CULLED, "rollback")
            return
        for seed in self.seeds.values():
            if swept_by(pb.COMMAND_TYPE_ROLLBACK, seed.stage):
                self._move(seed, pb.SEED_STAGE_CULLED, "rollback")

    def _target(self, seed_id: str) -> Seed:
        seed = self.seeds.get(seed_id)
        if seed is None:
            raise _Refusal("unknown_seed", seed_id or "<no target>")
        return seed

    def _seed_command(self, command: pb.AdaptationCommand) -> None:
        seed = self._target(command.target_seed_id)
        op = command.seed.operation
        _refuse_if(transition_refusal(op, seed.stage))
        target = next_stage(op, seed.stage)
        assert target is not None
        why = pb.SeedOperation.Name(op).removeprefix("SEED_OP_").lower()
        if command.reason:
            why = f"{why} ({command.reason})"
        if op == pb.SEED_OP_GERMINATE:
            self._germinate(seed, command.seed, why)
            return
        gate = check_gate(op, seed.stage, self._gate_inputs(seed), self.settings.gates)
        if not gate.passed:
            raise _Refusal(f"gate_{gate.gate}", gate.detail)
        if op == pb.SEED_OP_START_BLENDING:
            self._start_blending(seed, command.seed)
        self._move(seed, target, why)

    def _gate_inputs(self, seed: Seed, added_parameters: int = 0) -> GateInputs:
        live = self.live_seeds
        return GateInputs(
            steps_in_stage=self.step - seed.stage_entered_step,
            alpha=seed.alpha,
            seed_gradient_norm=seed.gradient_norm,
            loss_ema=self.loss_ema,
            blend_baseline_loss=seed.blend_baseline_loss,
            isolation_violations=seed.isolation_violations,
            added_parameters=added_parameters,
            seed_parameters=sum(s.parameters for s in live),
            host_parameters=self.host_parameters,
            live_seeds=len(live),
        )

    def _germinate(self, seed: Seed, order: pb.SeedCommand, why: str) -> None:
        _refuse_if(paused_refusal(self.step, self.paused_until_step))
        try:
            blueprint = self.blueprints.get(order.blueprint_id)
        except KeyError:
            raise _Refusal("unknown_blueprint", order.blueprint_id) from None
        site = self._site_of[seed.seed_id]
        parameters = dict(order.parameters)
        _refuse_if(germination_refusal(blueprint, site.kind, parameters))
        module = build_adapter(
            blueprint.constructor, site.width, init_scale=parameters.get(INIT_SCALE, 0.0)
        ).to(self.device)
        count = sum(p.numel() for p in module.parameters())
        gate = check_gate(
            pb.SEED_OP_GERMINATE, seed.stage, self._gate_inputs(seed, count), self.settings.gates
        )
        if not gate.passed:
            raise _Refusal(f"gate_{gate.gate}", gate.detail)
        ratio = parameters.get(LR_RATIO, self.settings.seed_default_lr_ratio)
        optimizer = torch.optim.Adam(
            module.parameters(), lr=self.learning_rates.learning_rate * ratio
        )
        self.learning_rates.attach(optimizer, ratio)
        seed.module, seed.optimizer = module, optimizer
        seed.blueprint_id = blueprint.blueprint_id
        seed.blueprint_risk = blueprint.risk
        seed.parameters = count
        seed.lr_ratio = ratio
        seed.germinated_step = self.step
        seed.gradient_norm = math.nan
        seed.isolation_violations = 0
        self._move(seed, pb.SEED_STAGE_GERMINATED, why)

    def _start_blending(self, seed: Seed, order: pb.SeedCommand) -> None:
        _refuse_if(blend_refusal(order))
        seed.blend_method = order.blend_method
        seed.blend_ramp_steps = order.alpha_steps
        seed.blend_progress_steps = 0
        seed.alpha = 0.0
        seed.blend_baseline_loss = self.loss_ema

    # ------------------------------------------------------------ transitions

    def _move(self, seed: Seed, stage: pb.SeedLifecycleStage.ValueType, reason: str) -> None:
        """Change a seed's stage and everything that goes with it; record the event."""
        previous = seed.stage
        if stage == pb.SEED_STAGE_CULLED:
            self._release(seed)
        elif stage in (pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_PROBATIONARY):
            seed.alpha = 1.0
        elif stage == pb.SEED_STAGE_FOSSILIZED:
            seed.alpha = 1.0
            if seed.module is not None:
                seed.module.requires_grad_(False)
            self._drop_optimizer(seed)
        elif stage == pb.SEED_STAGE_DORMANT:
            seed.blueprint_id, seed.blueprint_risk = "", 0.0
            seed.isolation_violations = 0
            seed.gradient_norm = math.nan
        seed.stage = stage
        seed.stage_entered_step = self.step
        self._stirring = tuple(s for s in self.seeds.values() if s.stage not in _RESTING)
        self._site_of[seed.seed_id].refresh()
        event = LifecycleEvent(
            self.step, seed.seed_id, seed.layer_id, previous, stage, reason, seed.blueprint_id
        )
        self._events.append(event)
        self.history.append(event)
        self.stats.transitions += 1

    def _drop_optimizer(self, seed: Seed) -> None:
        if seed.optimizer is not None:
            self.learning_rates.detach(seed.optimizer)
            seed.optimizer = None

    def _release(self, seed: Seed) -> None:
        self._drop_optimizer(seed)
        seed.module = None
        seed.parameters = 0
        seed.alpha = 0.0
        seed.blend_baseline_loss = math.nan

    # -------------------------------------------------------------- per step

    def step_seeds(self) -> None:
        """After the host's optimiser step: seeds' gradient norms, health, their own step.

        A seed whose gradient is not finite is culled at once (``gradient_health``):
        stepping it would corrupt it, and from BLENDING on, the host.
        """
        training = [s for s in self._stirring if s.stage in TRAINABLE and s.optimizer]
        if not training:
            return
        norms: list[torch.Tensor] = []
        stepped: list[Seed] = []
        for seed in training:
            assert seed.module is not None
            grads = [p.grad for p in seed.module.parameters() if p.grad is not None]
            if grads:
                norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                stepped.append(seed)
        if not stepped:
            return
        for seed, norm in zip(stepped, torch.stack(norms).tolist(), strict=True):
            seed.gradient_norm = norm
            assert seed.optimizer is not None
            if not math.isfinite(norm):
                self._move(seed, pb.SEED_STAGE_CULLED, "gradient_health")
                continue
            seed.optimizer.step()
            seed.optimizer.zero_grad(set_to_none=True)

    def advance_alpha(self) -> None:
        """One step along each blending seed's schedule (frozen while paused)."""
        if self.step < self.paused_until_step:
            return
        for seed in self._stirring:
            if seed.stage == pb.SEED_STAGE_BLENDING and seed.alpha < 1.0:
                seed.blend_progress_steps += 1
                seed.alpha = alpha_at(
                    seed.blend_method,
                    seed.blend_progress_steps,
                    seed.blend_ramp_steps,
                    self.settings.warmup_hold,
                )

    def finalize_step(self, step: int, training_loss: float) -> None:
        """Close step ``step``: isolation results, scheduled transitions, telemetry."""
        started = time.perf_counter()
        decay = self.settings.loss_ema_decay
        if math.isfinite(training_loss):
            self.loss_ema = (
                training_loss
                if math.isnan(self.loss_ema)
                else decay * self.loss_ema + (1.0 - decay) * training_loss
            )
        if self._stirring:
            self._check_isolation()
            self._scheduled_transitions()
        if self._events or self._apply_ms or step % self.settings.telemetry_every_steps == 0:
            self._report(step)
        self._events.clear()
        self._apply_ms = 0.0
        self.step = step + 1
        self.stats.finalized += 1
        self._finalize_ms = (time.perf_counter() - started) * 1000.0
        self.finalize_latencies_ms.append(self._finalize_ms)

    def _report(self, step: int) -> None:
        """Hand this step's telemetry record to the outbox (never blocks)."""
        snapshots = tuple(
            SeedSnapshot(
                seed.seed_id,
                seed.layer_id,
                seed.stage,
                seed.alpha,
                seed.gradient_norm,
                step - seed.germinated_step,
                seed.parameters,
                seed.isolation_violations,
                seed.blueprint_id,
            )
            for seed in self.seeds.values()
            if seed.stage != pb.SEED_STAGE_DORMANT
        )
        self.outbox.offer(
            StepTelemetry(
                step,
                self._clock_ns(),
                snapshots,
                tuple(self._events),
                self._apply_ms,
                self._finalize_ms,
            )
        )

    def _check_isolation(self) -> None:
        self._last_violations = 0
        for site in self.sites:
            violated = site.take_violation()
            if violated is None:
                continue
            for seed in site.seeds:
                if seed.stage != pb.SEED_STAGE_TRAINING:
                    continue
                seed.isolation_checks += 1
                self.stats.isolation_checks += 1
                if violated:
                    self._last_violations += 1
                    seed.isolation_violations += 1
                    self.stats.isolation_violations += 1
                    self._move(seed, pb.SEED_STAGE_CULLED, EventKind.ISOLATION_VIOLATION)

    def _scheduled_transitions(self) -> None:
        """Culled slots move on by ``rules.scheduled_stage``, back to DORMANT."""
        for seed in self._stirring:
            waited = self.step - seed.stage_entered_step
            stage = scheduled_stage(seed.stage, waited, self.settings.embargo_steps)
            if stage is not None:
                self._move(seed, stage, SCHEDULED_REASON[stage])
