"""Kasmina's command handling for simulated runs, on the shared rules.

Transitions and gates are ``kasmina.lifecycle`` (``next_stage``, ``check_gate``),
refusals, scheduled stages and sweeps ``kasmina.rules``, alpha ramps
``kasmina.blending.alpha_at``: the same functions the real executor calls, so a command
is applied or refused, under the same reason, as Kasmina would. What differs is only
what a move does to a seed: here it sets the simulated seed's arrays instead of
building a module. Commands are not signed in the simulator, so none is rejected;
each counts as verified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from tamiyo_bus.kasmina.blending import alpha_at
from tamiyo_bus.kasmina.executor import ApplyResult, KasminaStats
from tamiyo_bus.kasmina.lifecycle import ACTIVE, HAS_MODULE, GateInputs, check_gate, next_stage
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
from tamiyo_bus.kasmina.telemetry import LifecycleEvent
from tamiyo_bus.sim.dynamics import seed_cure
from tamiyo_bus.sim.host import IntArray, SimHost, adapter_efficiency
from tamiyo_bus.sim.settings import SimSettings
from tamiyo_bus.sim.state import NO_BLUEPRINT, BoolArray, RunState, cells, stage_table
from tamiyo_bus.urza.catalogue import LR_RATIO

S = pb.SeedLifecycleStage
HAS_MODULE_TABLE = stage_table(HAS_MODULE)
SCHEDULED_TABLE = stage_table(
    frozenset({pb.SEED_STAGE_CULLED, pb.SEED_STAGE_EMBARGOED, pb.SEED_STAGE_RESETTING})
)


def _stage(value: int) -> pb.SeedLifecycleStage.ValueType:
    return pb.SeedLifecycleStage.ValueType(value)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command lands: one run of a RunState, at one step."""

    state: RunState
    run: int
    run_id: str
    step: int
    shaking: float  # the run's instability now: a germination during it spikes the loss
    rng: np.random.Generator


def _calm_loss(state: RunState, run: int) -> float:
    """The run's loss without the spikes still decaying: what a new spike scales with
    (so spikes do not feed on each other)."""
    return float(state.true_loss[run] - state.spike_loss[run])


class SimExecutor:
    """Applies commands to the runs of one ``RunState``; keeps Kasmina's counters and
    lifecycle history per run."""

    def __init__(self, host: SimHost, settings: SimSettings) -> None:
        self.host = host
        self.settings = settings
        self.kasmina = settings.kasmina
        self.efficiency = adapter_efficiency(host.blueprints, settings.dynamics.low_rank_efficiency)
        self.stats: list[KasminaStats] = []
        self.history: list[list[LifecycleEvent]] = []
        self._isolation_checks = np.zeros(0, dtype=np.int64)
        self._finalized = 0

    def reset(self, runs: int) -> None:
        self.stats = [KasminaStats() for _ in range(runs)]
        self.history = [[] for _ in range(runs)]
        self._isolation_checks = np.zeros(runs, dtype=np.int64)
        self._finalized = 0

    # ---------------------------------------------------------------- commands

    def apply(self, target: Target, command: pb.AdaptationCommand) -> ApplyResult:
        """Apply ``command`` to ``target``'s run; a refused command changes nothing."""
        stats = self.stats[target.run]
        stats.verified += 1
        refusal = self._dispatch(target, command)
        if refusal is not None:
            stats.refused[refusal.reason] += 1
            return ApplyResult(command.command_id, True, False, refusal.reason, refusal.detail)
        stats.applied += 1
        return ApplyResult(command.command_id, True, True, "applied")

    def _dispatch(self, target: Target, command: pb.AdaptationCommand) -> Refusal | None:
        if command.training_run_id and command.training_run_id != target.run_id:
            return Refusal("wrong_run", f"command for run {command.training_run_id}")
        state, run = target.state, target.run
        kind = command.command_type
        if kind == pb.COMMAND_TYPE_NO_OP:
            return None
        if kind == pb.COMMAND_TYPE_SEED:
            return self._seed_command(target, command)
        if kind == pb.COMMAND_TYPE_OPTIMIZER:
            refusal = learning_rate_scale_refusal(command)
            if refusal is None:
                band = self.settings.lr
                scaled = state.lr_scale[run] * command.optimizer.learning_rate_scale
                state.lr_scale[run] = min(max(scaled, band.min_tamiyo_scale), band.max_tamiyo_scale)
            return refusal
        if kind == pb.COMMAND_TYPE_PAUSE:
            state.paused_until_step[run] = target.step + self.kasmina.pause_steps
            return None
        if kind == pb.COMMAND_TYPE_CIRCUIT_BREAKER:
            self.stats[run].breaker_commands += 1
            return None
        if kind in (pb.COMMAND_TYPE_EMERGENCY, pb.COMMAND_TYPE_ROLLBACK):
            return self._sweep(target, kind, command.target_seed_id)
        return Refusal("invalid", f"command type {command.command_type}")

    def _sweep(self, target: Target, kind: int, target_seed_id: str) -> Refusal | None:
        """EMERGENCY culls every active seed; ROLLBACK the named one, or with none named
        every active one but those TRAINING (``rules.swept_by``)."""
        state, run, step = target.state, target.run, target.step
        reason = "emergency" if kind == pb.COMMAND_TYPE_EMERGENCY else "rollback"
        if kind == pb.COMMAND_TYPE_ROLLBACK and target_seed_id:
            seed = self.host.seed_index.get(target_seed_id)
            if seed is None:
                return Refusal("unknown_seed", target_seed_id)
            stage = _stage(state.stage[run, seed])
            if stage not in ACTIVE:
                return Refusal("wrong_stage", f"{target_seed_id} is {S.Name(stage)}")
            self.move(state, run, seed, pb.SEED_STAGE_CULLED, reason, step)
            return None
        for seed in range(len(self.host.seed_ids)):
            if swept_by(kind, int(state.stage[run, seed])):
                self.move(state, run, seed, pb.SEED_STAGE_CULLED, reason, step)
        return None

    def _seed_command(self, target: Target, command: pb.AdaptationCommand) -> Refusal | None:
        state, run, step = target.state, target.run, target.step
        seed = self.host.seed_index.get(command.target_seed_id)
        if seed is None:
            return Refusal("unknown_seed", command.target_seed_id or "<no target>")
        op = command.seed.operation
        stage = _stage(state.stage[run, seed])
        refusal = transition_refusal(op, stage)
        if refusal is not None:
            return refusal
        to_stage = next_stage(op, stage)
        assert to_stage is not None
        why = pb.SeedOperation.Name(op).removeprefix("SEED_OP_").lower()
        if command.reason:
            why = f"{why} ({command.reason})"
        if op == pb.SEED_OP_GERMINATE:
            return self._germinate(target, seed, command.seed, why)
        gate = check_gate(op, stage, self.gate_inputs(state, run, seed, step), self.kasmina.gates)
        if not gate.passed:
            return Refusal(f"gate_{gate.gate}", gate.detail)
        if op == pb.SEED_OP_START_BLENDING:
            refusal = blend_refusal(command.seed)
            if refusal is not None:
                return refusal
            self._start_blending(target, seed, command.seed)
        self.move(state, run, seed, to_stage, why, step)
        return None

    def gate_inputs(
        self, state: RunState, run: int, seed: int, step: int, added_parameters: int = 0
    ) -> GateInputs:
        """What Kasmina's gates read, gathered as ``Kasmina._gate_inputs`` gathers it."""
        live = HAS_MODULE_TABLE[state.stage[run]]
        return GateInputs(
            steps_in_stage=step - int(state.stage_entered_step[run, seed]),
            alpha=float(state.alpha[run, seed]),
            seed_gradient_norm=float(state.gradient_norm[run, seed]),
            loss_ema=float(state.kasmina_loss_ema[run]),
            blend_baseline_loss=float(state.blend_baseline_loss[run, seed]),
            isolation_violations=int(state.isolation_violations[run, seed]),
            added_parameters=added_parameters,
            seed_parameters=int(state.parameters[run, live].sum()),
            host_parameters=self.host.host_parameters,
            live_seeds=int(live.sum()),
        )

    def _germinate(
        self, target: Target, seed: int, order: pb.SeedCommand, why: str
    ) -> Refusal | None:
        state, run, step = target.state, target.run, target.step
        refusal = paused_refusal(step, int(state.paused_until_step[run]))
        if refusal is not None:
            return refusal
        index = self.host.blueprint_index.get(order.blueprint_id)
        if index is None:
            return Refusal("unknown_blueprint", order.blueprint_id)
        blueprint = self.host.blueprints[index]
        layer = int(self.host.seed_layer[seed])
        parameters = dict(order.parameters)
        refusal = germination_refusal(blueprint, self.host.layer_kinds[layer], parameters)
        if refusal is not None:
            return refusal
        count = int(self.host.adapter_parameters[index, layer])
        inputs = self.gate_inputs(state, run, seed, step, count)
        gate = check_gate(pb.SEED_OP_GERMINATE, state.stage[run, seed], inputs, self.kasmina.gates)
        if not gate.passed:
            return Refusal(f"gate_{gate.gate}", gate.detail)
        state.blueprint[run, seed] = index
        state.risk[run, seed] = blueprint.risk
        state.parameters[run, seed] = count
        state.lr_ratio[run, seed] = parameters.get(LR_RATIO, self.kasmina.seed_default_lr_ratio)
        state.germinated_step[run, seed] = step
        state.gradient_norm[run, seed] = math.nan
        state.isolation_violations[run, seed] = 0
        state.learned[run, seed] = 0.0
        state.cure[run, seed] = seed_cure(
            count,
            float(self.host.layer_parameters[layer]),
            float(state.deficit_need[run, layer]),
            float(self.efficiency[index]),
        )
        spike = self.settings.dynamics.germination_spike_per_instability * target.shaking
        state.spike_loss[run] += spike * _calm_loss(state, run)
        self.move(state, run, seed, pb.SEED_STAGE_GERMINATED, why, step)
        return None

    def _start_blending(self, target: Target, seed: int, order: pb.SeedCommand) -> None:
        state, run = target.state, target.run
        state.blend_method[run, seed] = order.blend_method
        state.blend_ramp_steps[run, seed] = order.alpha_steps
        state.blend_progress_steps[run, seed] = 0
        state.alpha[run, seed] = 0.0
        state.blend_baseline_loss[run, seed] = state.kasmina_loss_ema[run]
        dynamics = self.settings.dynamics
        risk = state.risk[run, seed]
        if target.rng.random() < dynamics.blend_spike_probability_per_risk * risk:
            state.spike_loss[run] += dynamics.blend_spike_per_risk * risk * _calm_loss(state, run)

    # ------------------------------------------------------------- transitions

    def move(
        self,
        state: RunState,
        run: int,
        seed: int,
        stage: pb.SeedLifecycleStage.ValueType,
        reason: str,
        step: int,
    ) -> None:
        """Change a seed's stage and what goes with it (as Kasmina's ``_move``)."""
        previous = _stage(state.stage[run, seed])
        if stage == pb.SEED_STAGE_CULLED:
            state.parameters[run, seed] = 0
            state.alpha[run, seed] = 0.0
            state.blend_baseline_loss[run, seed] = math.nan
            state.learned[run, seed] = 0.0
            state.cure[run, seed] = 0.0
        elif stage in (
            pb.SEED_STAGE_SHADOWING,
            pb.SEED_STAGE_PROBATIONARY,
            pb.SEED_STAGE_FOSSILIZED,
        ):
            state.alpha[run, seed] = 1.0
        elif stage == pb.SEED_STAGE_DORMANT:
            state.blueprint[run, seed] = NO_BLUEPRINT
            state.risk[run, seed] = 0.0
            state.isolation_violations[run, seed] = 0
            state.gradient_norm[run, seed] = math.nan
        state.stage[run, seed] = stage
        state.stage_entered_step[run, seed] = step
        blueprint = int(state.blueprint[run, seed])
        self.history[run].append(
            LifecycleEvent(
                step,
                self.host.seed_ids[seed],
                self.host.topology.layers[int(self.host.seed_layer[seed])].layer_id,
                previous,
                stage,
                reason,
                self.host.blueprints[blueprint].blueprint_id if blueprint >= 0 else "",
            )
        )
        self.stats[run].transitions += 1

    # ---------------------------------------------------------------- per step

    def advance_alpha(self, state: RunState, step: int) -> None:
        """One step along each blending seed's ramp, in runs that are not paused."""
        ramping = (state.stage == pb.SEED_STAGE_BLENDING) & (state.alpha < 1.0)
        ramping &= (step >= state.paused_until_step)[:, None]
        for run, seed in cells(ramping):
            progress = int(state.blend_progress_steps[run, seed]) + 1
            state.blend_progress_steps[run, seed] = progress
            state.alpha[run, seed] = alpha_at(
                pb.BlendMethod.ValueType(state.blend_method[run, seed]),
                progress,
                int(state.blend_ramp_steps[run, seed]),
                self.kasmina.warmup_hold,
            )

    def finalize(self, state: RunState, violated: BoolArray, step: int) -> IntArray:
        """Close ``step`` as Kasmina's ``finalize_step`` does: its loss average,
        isolation results (``violated``: TRAINING seeds that broke isolation; each is
        culled), scheduled transitions. Returns each run's violations."""
        decay = self.kasmina.loss_ema_decay
        ema = state.kasmina_loss_ema
        state.kasmina_loss_ema = np.where(
            np.isnan(ema), state.batch_loss, decay * ema + (1.0 - decay) * state.batch_loss
        )
        training = state.stage == pb.SEED_STAGE_TRAINING
        self._isolation_checks += training.sum(axis=1)
        self._finalized += 1
        for run, seed in cells(violated):
            state.isolation_violations[run, seed] += 1
            self.stats[run].isolation_violations += 1
            self.move(state, run, seed, pb.SEED_STAGE_CULLED, EventKind.ISOLATION_VIOLATION, step)
        waiting = SCHEDULED_TABLE[state.stage]
        for run, seed in cells(waiting):
            waited = step - int(state.stage_entered_step[run, seed])
            stage = scheduled_stage(int(state.stage[run, seed]), waited, self.kasmina.embargo_steps)
            if stage is not None:
                self.move(state, run, seed, stage, SCHEDULED_REASON[stage], step)
        violations: IntArray = violated.sum(axis=1)
        return violations

    def kasmina_stats(self, run: int) -> KasminaStats:
        """Kasmina's counters for ``run`` (the per-step ones brought up to date)."""
        stats = self.stats[run]
        stats.finalized = self._finalized
        stats.isolation_checks = int(self._isolation_checks[run])
        return stats
