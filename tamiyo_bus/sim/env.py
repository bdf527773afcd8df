"""``VectorSim``: N simulated training runs in lockstep, driven by decisions.

A generic rollout loop drives it like a vectorised environment::

    packets = sim.reset()
    while True:
        commands = [decide(p) for p in packets]  # one AdaptationCommand per run
        result = sim.step(commands)              # apply, run k steps, next packets
        if result.done:
            break
        packets = result.packets

Within one optimiser step the order is Tolaria's: train (loss, gradients), on a
decision step the packet and the command, then alpha, then Kasmina's finalize (loss
average, isolation, scheduled stages), the simulated risk engine's watchdog, and at an
epoch's end validation and the field-report windows. Every run's episode has the
same length, so all runs end together. Everything random is drawn from one
generator seeded at construction: the same seed, run count and commands give the same
episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from tamiyo_bus.kasmina.executor import ApplyResult
from tamiyo_bus.kasmina.lifecycle import ACTIVE, BLENDED
from tamiyo_bus.learning.reward import Progress, interval_terms, reward
from tamiyo_bus.policy.topology import HostTopology
from tamiyo_bus.sim import dynamics
from tamiyo_bus.sim.executor import SimExecutor, Target
from tamiyo_bus.sim.host import FloatArray, IntArray, SimHost, build_host
from tamiyo_bus.sim.packets import PacketWriter, model_parameters
from tamiyo_bus.sim.reports import SimReports
from tamiyo_bus.sim.settings import SimSettings
from tamiyo_bus.sim.state import BoolArray, RunState, cells, new_state, stage_table
from tamiyo_bus.urza.blueprint import Blueprint
from tamiyo_bus.urza.catalogue import default_catalogue
from tamiyo_bus.urza_client import BlueprintMetadata

WATCHED = stage_table(BLENDED - {pb.SEED_STAGE_FOSSILIZED})  # what a rollback may target
IS_ACTIVE = stage_table(ACTIVE)
WATCHDOG_REASON = "watchdog"


@dataclass(frozen=True, slots=True)
class SimStep:
    """What one decision led to, per run.

    ``packets``: the next decision's packets (after the last decision: the final
    state). ``rewards``: the interval reward of each run's decision
    (``learning.reward.interval_terms`` of the two packets and the risk events
    between them: ``rollbacks``, ``emergencies``, ``isolation_violations``).
    ``reports``: field reports closed meanwhile.
    """

    packets: tuple[pb.SystemStatePacket, ...]
    rewards: FloatArray
    done: bool
    results: tuple[ApplyResult, ...]
    reports: tuple[tuple[pb.FieldReport, ...], ...]
    rollbacks: IntArray
    emergencies: IntArray
    isolation_violations: IntArray


@dataclass
class _Interval:
    """Risk events of each run between two decisions."""

    rollbacks: IntArray
    emergencies: IntArray
    violations: IntArray
    reports: list[list[pb.FieldReport]]

    @classmethod
    def empty(cls, runs: int) -> _Interval:
        zeros = np.zeros(runs, dtype=np.int64)
        return cls(zeros.copy(), zeros.copy(), zeros.copy(), [[] for _ in range(runs)])


class VectorSim:
    """``runs`` simulated training runs of one host topology (see the module docstring)."""

    def __init__(
        self,
        settings: SimSettings | None = None,
        *,
        runs: int = 1,
        seed: int = 0,
        blueprints: Sequence[Blueprint] | None = None,
    ) -> None:
        if runs < 1:
            raise ValueError("runs must be at least 1")
        self.settings = settings = settings or SimSettings()
        self.runs = runs
        self.seed = seed
        self.host: SimHost = build_host(
            settings.host.layer_kinds,
            settings.host.layer_width,
            settings.kasmina.slots_per_layer,
            default_catalogue() if blueprints is None else blueprints,
        )
        self.rng = np.random.default_rng(seed)
        self.executor = SimExecutor(self.host, settings)
        self.writer = PacketWriter(self.host, settings.host, settings.lr.base_lr)
        self.reports = SimReports(settings.windows)
        self.episode = -1
        # Replaced by reset(); drawn from its own generator so the runs' stream starts there.
        placeholder = np.random.default_rng(seed)
        self.state: RunState = new_state(self.host, settings.dynamics, runs, placeholder)
        self.run_ids: tuple[str, ...] = ()
        self.step_index = 0
        self.done = True
        self._shaking = np.zeros(runs)
        self._violated: BoolArray = np.zeros((runs, len(self.host.seed_ids)), dtype=np.bool_)
        self._last_violations = np.zeros(runs, dtype=np.int64)
        self._epoch_loss = np.zeros(runs)
        self._packets: tuple[pb.SystemStatePacket, ...] = ()
        self._progress: list[Progress] = []

    @property
    def topology(self) -> HostTopology:
        return self.host.topology

    @property
    def blueprint_metadata(self) -> dict[str, BlueprintMetadata]:
        return self.host.metadata

    def reset(self) -> tuple[pb.SystemStatePacket, ...]:
        """Start a new episode of every run; the packets of its first decision step."""
        self.episode += 1
        self.state = new_state(self.host, self.settings.dynamics, self.runs, self.rng)
        self.executor.reset(self.runs)
        self.reports = SimReports(self.settings.windows)
        self.run_ids = tuple(f"sim-{self.seed}-e{self.episode}-r{r}" for r in range(self.runs))
        self.step_index = 0
        self.done = False
        self._last_violations[:] = 0
        self._epoch_loss[:] = 0.0
        self._train()
        self._packets = self._decision_packets()
        self._progress = self._progress_now()
        return self._packets

    def step(self, commands: Sequence[pb.AdaptationCommand]) -> SimStep:
        """Apply one command per run at this decision step, then run until the next one.

        A command without a ``command_id`` is given one (on a copy): field reports are
        keyed by it.
        """
        if self.done:
            raise RuntimeError("the episode is over: call reset()")
        if len(commands) != self.runs:
            raise ValueError(f"need {self.runs} commands, got {len(commands)}")
        step = self.step_index
        interval = _Interval.empty(self.runs)
        results = []
        for run, command in enumerate(commands):
            command = self._with_id(command, run, step)
            result = self.executor.apply(self._target(run, step), command)
            results.append(result)
            if result.applied:
                self.reports.on_command(command, self._packets[run])
        self._finish(interval)
        for _ in range(self.settings.decision_every_steps - 1):
            self._train()
            self._finish(interval)
        self.done = self.step_index >= self.settings.total_steps
        if self.done:
            for run, run_id in enumerate(self.run_ids):
                interval.reports[run].extend(self.reports.on_run_end(run_id, self._now_ns()))
        else:
            self._train()
        self._packets = self._decision_packets()
        progress = self._progress_now()
        rewards = np.array(
            [
                reward(
                    interval_terms(
                        before,
                        after,
                        rollbacks=int(interval.rollbacks[run]),
                        emergencies=int(interval.emergencies[run]),
                        isolation_violations=int(interval.violations[run]),
                    ),
                    self.settings.reward,
                )
                for run, (before, after) in enumerate(zip(self._progress, progress, strict=True))
            ]
        )
        self._progress = progress
        return SimStep(
            self._packets,
            rewards,
            self.done,
            tuple(results),
            tuple(tuple(r) for r in interval.reports),
            interval.rollbacks,
            interval.emergencies,
            interval.violations,
        )

    # ----------------------------------------------------------------- per step

    def _train(self) -> None:
        settings = self.settings
        state = self.state
        self._shaking = dynamics.train_step(
            state, self.host, settings.dynamics, settings.loss_ema_decay, self.rng
        )
        self._violated = dynamics.isolation_violations(
            state.stage, state.risk, settings.dynamics, self.rng
        )
        self._epoch_loss += state.batch_loss

    def _finish(self, interval: _Interval) -> None:
        """Alpha, Kasmina's finalize, the watchdog, and an epoch's end."""
        step = self.step_index
        state = self.state
        self.executor.advance_alpha(state, step)
        # Only seeds still TRAINING are checked (a command may have moved one on).
        violated = self._violated & (state.stage == pb.SEED_STAGE_TRAINING)
        for run, seed in cells(violated):
            self.reports.on_isolation_violation(self.run_ids[run], self.host.seed_ids[seed])
        self._last_violations = self.executor.finalize(state, violated, step)
        interval.violations += self._last_violations
        state.best_loss_ema = np.minimum(state.best_loss_ema, state.kasmina_loss_ema)
        self._watchdog(interval, step)
        self.step_index = step + 1
        if self.step_index % self.settings.steps_per_epoch == 0:
            self._epoch_end(interval)

    def _watchdog(self, interval: _Interval, step: int) -> None:
        """The risk engine's stand-in: roll back a blended seed whose run regressed past
        ``rollback_loss_increase`` since its blending began; an EMERGENCY when the loss
        exceeds ``emergency_loss_ratio`` times the run's best while a seed is active."""
        watchdog = self.settings.watchdog
        state = self.state
        limit = state.blend_baseline_loss * (1.0 + watchdog.rollback_loss_increase)
        regressed = WATCHED[state.stage] & (state.kasmina_loss_ema[:, None] > limit)
        for run, seed in cells(regressed):
            seed_id = self.host.seed_ids[seed]
            command = pb.AdaptationCommand(
                command_type=pb.COMMAND_TYPE_ROLLBACK, target_seed_id=seed_id
            )
            self._risk_command(run, command, step)
            self.reports.on_event(self.run_ids[run], EventKind.ROLLBACK, seed_id)
            interval.rollbacks[run] += 1
        alarming = state.kasmina_loss_ema > watchdog.emergency_loss_ratio * state.best_loss_ema
        alarming &= IS_ACTIVE[state.stage].any(axis=1)
        for run in np.flatnonzero(alarming).tolist():
            self._risk_command(
                run, pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_EMERGENCY), step
            )
            self.reports.on_event(self.run_ids[run], EventKind.EMERGENCY)
            interval.emergencies[run] += 1

    def _risk_command(self, run: int, command: pb.AdaptationCommand, step: int) -> None:
        command.reason = WATCHDOG_REASON
        self.executor.apply(self._target(run, step), command)

    def _target(self, run: int, step: int) -> Target:
        return Target(self.state, run, self.run_ids[run], step, float(self._shaking[run]), self.rng)

    def _epoch_end(self, interval: _Interval) -> None:
        settings = self.settings
        state = self.state
        epoch = self.step_index // settings.steps_per_epoch - 1
        state.validation_loss, state.validation_accuracy = dynamics.validation(
            state.true_loss, settings.dynamics, self.rng
        )
        train_loss = self._epoch_loss / settings.steps_per_epoch
        self._epoch_loss = np.zeros(self.runs)
        for run, run_id in enumerate(self.run_ids):
            packet = self.writer.epoch_end(
                state,
                run,
                run_id,
                epoch=epoch,
                step=self.step_index,
                train_loss=float(train_loss[run]),
            )
            interval.reports[run].extend(self.reports.on_epoch_end(packet, self._now_ns()))

    # -------------------------------------------------------------- observing

    def _decision_packets(self) -> tuple[pb.SystemStatePacket, ...]:
        settings = self.settings
        state = self.state
        dynamics.seed_gradient_norms(state, self._shaking, settings.dynamics)
        norms = dynamics.layer_gradient_norms(
            self.host, state, self._shaking, settings.dynamics, self.rng
        )
        decay = settings.gradient_norm_ema_decay
        state.layer_norm_ema = dynamics.running_average(state.layer_norm_ema, norms, decay)
        state.gradient_norm_ema = dynamics.running_average(
            state.gradient_norm_ema, np.sqrt((norms * norms).sum(axis=1)), decay
        )
        epoch = min(self.step_index // settings.steps_per_epoch, settings.epochs - 1)
        return tuple(
            self.writer.decision(
                state,
                run,
                run_id,
                epoch=epoch,
                step=self.step_index,
                layer_norms=norms[run],
                violations=int(self._last_violations[run]),
            )
            for run, run_id in enumerate(self.run_ids)
        )

    def _progress_now(self) -> list[Progress]:
        """Each run's Progress, as ``Progress.of_packet`` would read it off its packet."""
        state = self.state
        model = model_parameters(self.host, state)
        ratio = (model - self.host.host_parameters) / model
        return [
            Progress(float(loss), float(accuracy), float(share))
            for loss, accuracy, share in zip(
                state.loss_ema, state.validation_accuracy, ratio, strict=True
            )
        ]

    def _with_id(self, command: pb.AdaptationCommand, run: int, step: int) -> pb.AdaptationCommand:
        if command.command_id:
            return command
        named = pb.AdaptationCommand()
        named.CopyFrom(command)
        named.command_id = f"{self.run_ids[run]}-c{step}"
        return named

    def _now_ns(self) -> int:
        return round(self.step_index * self.settings.host.step_ms * 1e6)
