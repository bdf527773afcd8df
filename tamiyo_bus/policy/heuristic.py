"""The hand-written baseline: what a careful engineer would do with the same view.

One action per decision, the first that applies:

1. cull a blended seed whose run has regressed past ``cull_regression`` since its
   blending began, on ``cull_patience_decisions`` decisions in a row;
2. fossilise a PROBATIONARY seed, 3. advance a BLENDING or SHADOWING seed, 4. start
   blending a TRAINING seed: each only when Kasmina's own gate
   (``lifecycle.check_gate``) passes on what the packet shows;
5. start training a GERMINATED seed;
6. germinate, when no seed is in flight, the loss has plateaued, the run is stable,
   and a layer shows a sustained deficit signal (its gradient norm per square root of
   its parameters, averaged over decisions, well above the median layer's): on that
   layer, with the largest fitting blueprint under the risk cap;
7. otherwise NO_OP.

It keeps what a packet does not show (running averages, how long each seed has been
in its stage) between decisions, and starts afresh when the global step goes back
(a new run). It only ever proposes what the masks allow.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import (
    ACTIVE,
    BLENDED,
    TRANSITIONS,
    GateInputs,
    GateSettings,
    check_gate,
)
from tamiyo_bus.policy.actions import ACTION_SPACE, BLEND_METHODS, SEED_COLUMN, PolicyAction
from tamiyo_bus.policy.features import BLOCK_OFFSETS, FEATURE_SPECS, NUM_STAGES
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.network import Cancelled
from tamiyo_bus.policy.schema import BLUEPRINT, GLOBAL, LAYER, RELATION_INDEX, SEED
from tamiyo_bus.policy.serving import Inference

_ACTION: dict[tuple[int, int], int] = {
    (spec.command_type, spec.seed_operation): i for i, spec in enumerate(ACTION_SPACE)
}
_NO_OP = _ACTION[(pb.COMMAND_TYPE_NO_OP, pb.SEED_OP_UNKNOWN)]
_STAGE_COLUMN = BLOCK_OFFSETS[SEED] + FEATURE_SPECS[SEED].categorical_offset("stage")
_MONITORS = RELATION_INDEX[(SEED, "monitors", LAYER)]


@dataclass(frozen=True)
class HeuristicSettings:
    """Thresholds of the heuristic (steps are optimiser steps; losses relative)."""

    signal_decay: float = 0.85  # per decision, of the per-layer deficit signal's average
    deficit_signal_ratio: float = 1.4  # a layer's signal / the median layer's
    deficit_sustain_decisions: int = 5  # decisions in a row above the ratio
    warmup_decisions: int = 10  # decisions observed before any germination
    plateau_window_steps: int = 100
    plateau_improvement: float = 0.03  # loss improvement over the window below: a plateau
    gradient_decay: float = 0.95  # per decision, of the global gradient norm's average
    instability_ratio: float = 1.5  # gradient norm / its average above: unstable
    max_blueprint_risk: float = 0.15
    blend_method: pb.BlendMethod.ValueType = pb.BLEND_METHOD_LINEAR
    alpha_steps: int = 32
    cull_regression: float = 0.05  # loss rise since blending began that counts
    cull_patience_decisions: int = 3
    gates: GateSettings = field(default_factory=GateSettings)


def _column(node_type: str, name: str) -> int:
    return FEATURE_SPECS[node_type].values.index(name)


@dataclass(frozen=True)
class _View:
    """The named figures the heuristic reads off a graph (nan: absent)."""

    step: int
    loss: float
    gradient_norm: float
    stage: np.ndarray  # [S]
    alpha: np.ndarray
    seed_gradient_norm: np.ndarray
    loss_delta: np.ndarray
    isolation_violations: np.ndarray
    seed_layer: np.ndarray  # [S], -1: unplaced
    layer_signal: np.ndarray  # [L]
    layer_busy: np.ndarray  # [L] has an active seed
    blueprint_risk: np.ndarray  # [B]
    blueprint_size: np.ndarray  # [B] log parameter count

    @classmethod
    def of(cls, graph: PolicyGraph) -> _View:
        def values(node_type: str, name: str) -> np.ndarray:
            raw = graph.raw[node_type]
            column = _column(node_type, name)
            return np.where(raw.presence[:, column] > 0, raw.values[:, column], np.nan)

        rows = graph.structure.rows(SEED)
        stage = graph.x[rows, _STAGE_COLUMN : _STAGE_COLUMN + NUM_STAGES].argmax(dim=1).numpy()
        seed_layer = np.full(len(graph.seed_ids), -1, dtype=np.int64)
        monitors = graph.structure.relation_positions[_MONITORS]
        seed_layer[graph.structure.src_local[monitors]] = graph.structure.dst_local[monitors]
        parameters = np.expm1(values(LAYER, "log_parameter_count"))
        return cls(
            step=round(math.expm1(float(np.nan_to_num(values(GLOBAL, "log_global_step")[0])))),
            loss=float(values(GLOBAL, "training_loss")[0]),
            gradient_norm=float(values(GLOBAL, "gradient_norm")[0]),
            stage=stage,
            alpha=np.nan_to_num(values(SEED, "alpha")),
            seed_gradient_norm=np.expm1(values(SEED, "log_gradient_norm")),
            loss_delta=values(SEED, "loss_delta"),
            isolation_violations=np.nan_to_num(values(SEED, "isolation_violations")),
            seed_layer=seed_layer,
            layer_signal=values(LAYER, "gradient_norm") / np.sqrt(np.maximum(parameters, 1.0)),
            layer_busy=np.nan_to_num(values(LAYER, "active_seeds")) > 0,
            blueprint_risk=values(BLUEPRINT, "risk"),
            blueprint_size=values(BLUEPRINT, "log_parameter_count"),
        )


class HeuristicPolicy(nn.Module):
    """See the module docstring. Deterministic: ``greedy`` and ``generator`` are
    ignored and every decision has log-probability 0."""

    def __init__(self, settings: HeuristicSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or HeuristicSettings()
        self._start(0)

    def _start(self, step: int) -> None:
        self._last_step = step
        self._observations = 0
        self._signal: np.ndarray | None = None
        self._sustained: np.ndarray | None = None  # [L] decisions in a row above the ratio
        self._gradient_average = math.nan
        self._unstable = False
        self._losses: deque[tuple[int, float]] = deque()
        self._since: dict[int, tuple[int, int]] = {}  # seed -> (stage, step it was entered)
        self._issued: dict[int, tuple[int, int]] = {}  # seed -> (operation sent, step)
        self._regressing: dict[int, int] = {}

    def decide(
        self,
        graph: PolicyGraph,
        *,
        greedy: bool = True,
        generator: torch.Generator | None = None,
        cancelled: Cancelled | None = None,
    ) -> Inference:
        view = _View.of(graph)
        self._observe(view)
        action = (
            self._cull(view, graph)
            or self._lifecycle(view, graph)
            or self._germinate(view, graph)
            or PolicyAction(_NO_OP)
        )
        if action.spec.needs_seed:
            self._issued[action.seed] = (action.spec.seed_operation, view.step)
        return Inference(action, 0.0, 0.0, 0.0)

    # ------------------------------------------------------------- observing

    def _observe(self, view: _View) -> None:
        if view.step < self._last_step:
            self._start(view.step)
        self._last_step = view.step
        self._observations += 1
        s = self.settings
        signal = np.nan_to_num(view.layer_signal)
        if self._signal is None or self._sustained is None or self._signal.shape != signal.shape:
            self._signal = signal
            self._sustained = np.zeros(len(signal), dtype=np.int64)
        else:
            self._signal = s.signal_decay * self._signal + (1.0 - s.signal_decay) * signal
        median = float(np.median(self._signal))
        above = self._signal > s.deficit_signal_ratio * median
        self._sustained = np.where(above, self._sustained + 1, 0)
        average, norm = self._gradient_average, view.gradient_norm
        self._unstable = math.isfinite(average) and norm > s.instability_ratio * average
        if math.isfinite(norm):
            fresh = not math.isfinite(average)
            self._gradient_average = (
                norm if fresh else s.gradient_decay * average + (1 - s.gradient_decay) * norm
            )
        if math.isfinite(view.loss):
            self._losses.append((view.step, view.loss))
        while len(self._losses) > 2 and self._losses[1][0] <= view.step - s.plateau_window_steps:
            self._losses.popleft()
        for seed, stage in enumerate(view.stage.tolist()):
            known = self._since.get(seed)
            if known is not None and known[0] == stage:
                continue
            issued = self._issued.pop(seed, None)
            entered = view.step
            if issued is not None and _moved_by(issued[0], stage):
                entered = issued[1]
            self._since[seed] = (stage, entered)
            self._regressing.pop(seed, None)

    def _plateaued(self, view: _View) -> bool:
        if not self._losses:
            return False
        then_step, then_loss = self._losses[0]
        if then_step > view.step - self.settings.plateau_window_steps or then_loss <= 0:
            return False
        return (then_loss - view.loss) / then_loss < self.settings.plateau_improvement

    # --------------------------------------------------------------- acting

    def _cull(self, view: _View, graph: PolicyGraph) -> PolicyAction | None:
        s = self.settings
        for seed, stage in enumerate(view.stage.tolist()):
            delta = view.loss_delta[seed]
            if (
                stage not in BLENDED
                or stage == pb.SEED_STAGE_FOSSILIZED
                or not math.isfinite(delta)
            ):
                continue
            baseline = view.loss - delta
            if baseline > 0 and delta / baseline > s.cull_regression:
                self._regressing[seed] = self._regressing.get(seed, 0) + 1
            else:
                self._regressing.pop(seed, None)
            if self._regressing.get(seed, 0) >= s.cull_patience_decisions:
                action = _seed_action(graph, pb.SEED_OP_CULL, seed)
                if action is not None:
                    return action
        return None

    def _lifecycle(self, view: _View, graph: PolicyGraph) -> PolicyAction | None:
        """The most advanced seed move whose gate passes (starting training has none)."""
        order = (
            (pb.SEED_OP_FOSSILIZE, pb.SEED_STAGE_PROBATIONARY),
            (pb.SEED_OP_ADVANCE, pb.SEED_STAGE_SHADOWING),
            (pb.SEED_OP_ADVANCE, pb.SEED_STAGE_BLENDING),
            (pb.SEED_OP_START_BLENDING, pb.SEED_STAGE_TRAINING),
            (pb.SEED_OP_START_TRAINING, pb.SEED_STAGE_GERMINATED),
        )
        for operation, stage in order:
            for seed in np.flatnonzero(view.stage == stage).tolist():
                gate = check_gate(
                    operation, stage, self._gate_inputs(view, seed), self.settings.gates
                )
                if not gate.passed:
                    continue
                action = _seed_action(graph, operation, seed)
                if action is not None:
                    return (
                        self._with_blend(action)
                        if operation == pb.SEED_OP_START_BLENDING
                        else action
                    )
        return None

    def _gate_inputs(self, view: _View, seed: int) -> GateInputs:
        _, entered = self._since.get(seed, (0, view.step))
        delta = float(view.loss_delta[seed])
        return GateInputs(
            steps_in_stage=view.step - entered,
            alpha=float(view.alpha[seed]),
            seed_gradient_norm=float(view.seed_gradient_norm[seed]),
            loss_ema=view.loss,
            blend_baseline_loss=view.loss - delta if math.isfinite(delta) else math.nan,
            isolation_violations=int(view.isolation_violations[seed]),
        )

    def _with_blend(self, action: PolicyAction) -> PolicyAction:
        s = self.settings
        return PolicyAction(
            action.action,
            action.seed,
            blend=BLEND_METHODS.index(s.blend_method),
            alpha_log_steps=math.log(s.alpha_steps),
        )

    def _germinate(self, view: _View, graph: PolicyGraph) -> PolicyAction | None:
        s = self.settings
        in_flight = any(stage in ACTIVE for stage in view.stage.tolist())
        if (
            in_flight
            or self._unstable
            or self._observations < s.warmup_decisions
            or self._signal is None
            or self._sustained is None
            or not self._plateaued(view)
        ):
            return None
        deficit = self._sustained >= s.deficit_sustain_decisions
        signal = np.where(deficit & ~view.layer_busy, self._signal, 0.0)
        column = SEED_COLUMN[_ACTION[(pb.COMMAND_TYPE_SEED, pb.SEED_OP_GERMINATE)]]
        for layer in np.argsort(-signal).tolist():
            if signal[layer] <= 0:
                return None
            for seed in np.flatnonzero(view.seed_layer == layer).tolist():
                if not bool(graph.masks.seed[seed, column]):
                    continue
                blueprint = self._blueprint(view, graph, seed)
                if blueprint is not None:
                    action = _ACTION[(pb.COMMAND_TYPE_SEED, pb.SEED_OP_GERMINATE)]
                    return PolicyAction(action, seed, blueprint)
        return None

    def _blueprint(self, view: _View, graph: PolicyGraph, seed: int) -> int | None:
        """The largest allowed blueprint within the risk cap (the safer of equals)."""
        allowed = graph.masks.blueprint[seed].numpy() & (
            view.blueprint_risk <= self.settings.max_blueprint_risk
        )
        if not allowed.any():
            return None
        candidates = np.flatnonzero(allowed)
        best = max(
            candidates.tolist(),
            key=lambda b: (view.blueprint_size[b], -view.blueprint_risk[b]),
        )
        return int(best)


def _moved_by(operation: int, stage: int) -> bool:
    """Whether ``stage`` is where ``operation`` sends a seed (so it was applied)."""
    return stage in TRANSITIONS.get(operation, {}).values()


def _seed_action(graph: PolicyGraph, operation: int, seed: int) -> PolicyAction | None:
    """The action for ``operation`` on ``seed``, if the masks allow it."""
    action = _ACTION[(pb.COMMAND_TYPE_SEED, operation)]
    if not bool(graph.masks.action[action]) or not bool(
        graph.masks.seed[seed, SEED_COLUMN[action]]
    ):
        return None
    return PolicyAction(action, seed)
