"""The state of N simulated runs as arrays: a run axis, then layers or seed slots.

Hidden state (the deficits, what a seed can cure, the instability episodes) lives
here beside what the packets report; only ``packets`` decides what is observed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.sim.host import FloatArray, IntArray, SimHost
from tamiyo_bus.sim.settings import DynamicsSettings

BoolArray = npt.NDArray[np.bool_]
NO_BLUEPRINT = -1


@dataclass
class RunState:
    """Mutable arrays; ``[N]`` per run, ``[N, L]`` per layer, ``[N, S]`` per seed slot."""

    # per run
    host_progress: FloatArray  # share of the host's own learnable loss learnt (0..1)
    lr_scale: FloatArray
    instability_level: FloatArray  # of the current exogenous episode
    instability_steps_left: IntArray
    spike_loss: FloatArray
    batch_loss: FloatArray
    true_loss: FloatArray  # hidden: the loss without batch noise
    loss_ema: FloatArray  # the packet's training_loss
    kasmina_loss_ema: FloatArray  # what the gates read
    best_loss_ema: FloatArray
    validation_loss: FloatArray
    validation_accuracy: FloatArray
    paused_until_step: IntArray
    gradient_norm_ema: FloatArray  # the packet's running average of the global norm
    # per layer, observed
    layer_norm_ema: FloatArray  # the packets' running averages of the layers' norms
    # per layer (hidden)
    deficit_loss: FloatArray
    deficit_need: FloatArray  # adapter parameters / layer parameters that cure it all
    gradient_factor: FloatArray
    uncured: FloatArray  # deficit loss the blended seeds leave
    # per seed slot
    stage: IntArray
    stage_entered_step: IntArray
    germinated_step: IntArray
    blueprint: IntArray  # index into the host's blueprints, or NO_BLUEPRINT
    risk: FloatArray
    parameters: IntArray
    lr_ratio: FloatArray
    alpha: FloatArray
    blend_method: IntArray
    blend_ramp_steps: IntArray
    blend_progress_steps: IntArray
    blend_baseline_loss: FloatArray
    learned: FloatArray  # how much of what it can cure the seed has learnt (0..1)
    cure: FloatArray  # share of its layer's deficit the seed cures, fully learnt
    gradient_norm: FloatArray
    isolation_violations: IntArray

    @property
    def runs(self) -> int:
        return len(self.lr_scale)


def _deficits(
    host: SimHost, dynamics: DynamicsSettings, runs: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    layers = host.layers
    loss = np.zeros((runs, layers))
    need = np.ones((runs, layers))
    most = min(dynamics.deficit_layers_max, layers)
    least = min(dynamics.deficit_layers_min, most)
    for run in range(runs):
        count = int(rng.integers(least, most + 1))
        chosen = rng.choice(layers, size=count, replace=False)
        loss[run, chosen] = rng.uniform(dynamics.deficit_loss_min, dynamics.deficit_loss_max, count)
        need[run, chosen] = rng.uniform(dynamics.deficit_need_min, dynamics.deficit_need_max, count)
    return loss, need


def new_state(
    host: SimHost, dynamics: DynamicsSettings, runs: int, rng: np.random.Generator
) -> RunState:
    """Fresh runs: every slot DORMANT, nothing learnt, hidden deficits drawn."""
    seeds = len(host.seed_ids)
    deficit_loss, deficit_need = _deficits(host, dynamics, runs, rng)
    spread = 1.0 + dynamics.layer_gradient_spread
    nan = np.full(runs, math.nan)
    return RunState(
        host_progress=np.zeros(runs),
        lr_scale=np.ones(runs),
        instability_level=np.zeros(runs),
        instability_steps_left=np.zeros(runs, dtype=np.int64),
        spike_loss=np.zeros(runs),
        batch_loss=nan.copy(),
        true_loss=nan.copy(),
        loss_ema=nan.copy(),
        kasmina_loss_ema=nan.copy(),
        best_loss_ema=np.full(runs, math.inf),
        validation_loss=nan.copy(),
        validation_accuracy=nan.copy(),
        paused_until_step=np.full(runs, -1, dtype=np.int64),
        gradient_norm_ema=nan.copy(),
        layer_norm_ema=np.full((runs, host.layers), math.nan),
        deficit_loss=deficit_loss,
        deficit_need=deficit_need,
        gradient_factor=np.exp(
            rng.uniform(-math.log(spread), math.log(spread), deficit_loss.shape)
        ),
        uncured=deficit_loss.copy(),
        stage=np.full((runs, seeds), pb.SEED_STAGE_DORMANT, dtype=np.int64),
        stage_entered_step=np.zeros((runs, seeds), dtype=np.int64),
        germinated_step=np.zeros((runs, seeds), dtype=np.int64),
        blueprint=np.full((runs, seeds), NO_BLUEPRINT, dtype=np.int64),
        risk=np.zeros((runs, seeds)),
        parameters=np.zeros((runs, seeds), dtype=np.int64),
        lr_ratio=np.ones((runs, seeds)),
        alpha=np.zeros((runs, seeds)),
        blend_method=np.zeros((runs, seeds), dtype=np.int64),
        blend_ramp_steps=np.zeros((runs, seeds), dtype=np.int64),
        blend_progress_steps=np.zeros((runs, seeds), dtype=np.int64),
        blend_baseline_loss=np.full((runs, seeds), math.nan),
        learned=np.zeros((runs, seeds)),
        cure=np.zeros((runs, seeds)),
        gradient_norm=np.full((runs, seeds), math.nan),
        isolation_violations=np.zeros((runs, seeds), dtype=np.int64),
    )


def stage_table(stages: frozenset[int]) -> BoolArray:
    """[stage value] -> member of ``stages``, for vectorised lookups."""
    table = np.zeros(max(pb.SeedLifecycleStage.values()) + 1, dtype=np.bool_)
    table[list(stages)] = True
    return table


def cells(mask: BoolArray) -> list[tuple[int, int]]:
    """The (run, slot) pairs where a ``[N, S]`` mask is set, as Python ints."""
    if not mask.any():
        return []
    runs, slots = np.nonzero(mask)
    return list(zip(runs.tolist(), slots.tolist(), strict=True))
