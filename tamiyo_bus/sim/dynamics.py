"""The simulator's hidden model of a training run, as small array functions.

Every function is IO-free and works on whole ``[N, ...]`` arrays, so one call advances
every simulated run; ``train_step`` strings them together for one optimiser step.
The equations are in docs/learning.md ("The simulator").
"""

from __future__ import annotations

import math

import numpy as np

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import BLENDED, TRAINABLE
from tamiyo_bus.sim.host import FloatArray, IntArray, SimHost
from tamiyo_bus.sim.settings import DynamicsSettings
from tamiyo_bus.sim.state import BoolArray, RunState, stage_table

IS_BLENDED = stage_table(BLENDED)
IS_TRAINABLE = stage_table(TRAINABLE)


def learn(progress: FloatArray, rate: FloatArray, learning_steps: float) -> FloatArray:
    """One step of exponential learning towards 1 at ``rate`` times the base speed."""
    learnt: FloatArray = 1.0 - (1.0 - progress) * np.exp(-rate / learning_steps)
    return learnt


def running_average(previous: FloatArray, value: FloatArray, decay: float) -> FloatArray:
    """Exponential running averages; where ``previous`` is nan, the value as it is."""
    averaged: FloatArray = np.where(
        np.isnan(previous), value, decay * previous + (1.0 - decay) * value
    )
    return averaged


def seed_cure(
    adapter_parameters: float, layer_parameters: float, deficit_need: float, efficiency: float
) -> float:
    """Share of its layer's deficit a fully learnt seed cures: its family's efficiency,
    scaled down when the adapter is smaller than the deficit needs."""
    capacity = adapter_parameters / layer_parameters
    return efficiency * min(1.0, capacity / deficit_need)


def uncured_deficit(
    deficit_loss: FloatArray, contribution: FloatArray, slots_per_layer: int
) -> FloatArray:
    """[N, L] deficit loss left after the blended seeds' contributions
    (``alpha * learned * cure`` per slot, slots layer-major)."""
    runs, layers = deficit_loss.shape
    cured = contribution.reshape(runs, layers, slots_per_layer).sum(axis=2)
    left: FloatArray = deficit_loss * (1.0 - np.minimum(cured, 1.0))
    return left


def seed_harm(
    alpha: FloatArray,
    learned: FloatArray,
    risk: FloatArray,
    misplaced: BoolArray,
    dynamics: DynamicsSettings,
) -> FloatArray:
    """[N] loss added by blended seeds: an untrained seed perturbs the host (more so a
    risky one), and a seed where no deficit is adds a little for nothing."""
    untrained = (1.0 - learned) * (
        dynamics.untrained_seed_loss + dynamics.untrained_seed_loss_per_risk * risk
    )
    per_seed = alpha * (untrained + dynamics.misplaced_seed_loss * misplaced)
    total: FloatArray = per_seed.sum(axis=1)
    return total


def instability(
    state: RunState, dynamics: DynamicsSettings, rng: np.random.Generator
) -> FloatArray:
    """[N] this step's instability: the exogenous episode (which may start now) plus
    what a learning rate above its base adds."""
    runs = state.runs
    idle = state.instability_steps_left == 0
    onset = idle & (rng.random(runs) < dynamics.instability_onset_per_step)
    if onset.any():
        count = int(onset.sum())
        state.instability_steps_left[onset] = rng.integers(
            dynamics.instability_steps_min, dynamics.instability_steps_max + 1, count
        )
        state.instability_level[onset] = rng.uniform(
            dynamics.instability_level_min, dynamics.instability_level_max, count
        )
    active = state.instability_steps_left > 0
    state.instability_steps_left[active] -= 1
    exogenous = np.where(active, state.instability_level, 0.0)
    return exogenous + dynamics.lr_instability_per_scale * np.maximum(state.lr_scale - 1.0, 0.0)


def train_step(
    state: RunState,
    host: SimHost,
    dynamics: DynamicsSettings,
    loss_ema_decay: float,
    rng: np.random.Generator,
) -> FloatArray:
    """One optimiser step of every run: learning, the loss and its running average.

    Returns the step's instability [N] (it also scales the observed gradient norms).
    """
    shaking = instability(state, dynamics, rng)
    state.host_progress = learn(state.host_progress, state.lr_scale, dynamics.host_learning_steps)
    trainable = IS_TRAINABLE[state.stage]
    rate = state.lr_scale[:, None] * state.lr_ratio
    state.learned = np.where(
        trainable, learn(state.learned, rate, dynamics.seed_learning_steps), state.learned
    )
    blended = IS_BLENDED[state.stage]
    alpha = np.where(blended, state.alpha, 0.0)
    slots = len(host.seed_ids) // host.layers
    uncured = uncured_deficit(state.deficit_loss, alpha * state.learned * state.cure, slots)
    misplaced = state.deficit_loss[:, host.seed_layer] == 0.0
    harm = seed_harm(alpha, state.learned, state.risk, misplaced, dynamics)
    state.spike_loss *= math.exp(-1.0 / dynamics.spike_decay_steps)
    learnable = dynamics.initial_loss - dynamics.floor_loss - state.deficit_loss.sum(axis=1)
    true_loss = (
        dynamics.floor_loss
        + learnable * (1.0 - state.host_progress)
        + uncured.sum(axis=1)
        + harm
        + state.spike_loss
    )
    sigma = dynamics.batch_loss_noise * (1.0 + shaking)
    state.batch_loss = true_loss * np.exp(sigma * rng.standard_normal(state.runs))
    state.loss_ema = running_average(state.loss_ema, state.batch_loss, loss_ema_decay)
    state.true_loss = true_loss
    state.uncured = uncured
    return shaking


def isolation_violations(
    stage: IntArray, risk: FloatArray, dynamics: DynamicsSettings, rng: np.random.Generator
) -> BoolArray:
    """[N, S] TRAINING seeds that broke isolation this step (a risky adapter is likelier to)."""
    training: BoolArray = stage == pb.SEED_STAGE_TRAINING
    if not training.any():
        return training
    chance = risk * dynamics.isolation_violation_per_risk_step
    violated: BoolArray = training & (rng.random(stage.shape) < chance)
    return violated


def layer_gradient_norms(
    host: SimHost,
    state: RunState,
    shaking: FloatArray,
    dynamics: DynamicsSettings,
    rng: np.random.Generator,
) -> FloatArray:
    """[N, L] observed gradient norms: a layer's size and hidden factor, shrinking as
    the host converges, larger while the layer's deficit is uncured (the signal a good
    policy reads) and while the run is unstable, with log-normal noise."""
    size = dynamics.gradient_norm_per_sqrt_parameter * np.sqrt(host.layer_parameters)
    floor = dynamics.converged_gradient_share
    converging = floor + (1.0 - floor) * (1.0 - state.host_progress)
    deficit = 1.0 + dynamics.deficit_gradient_gain_per_loss * state.uncured
    noise = np.exp(dynamics.gradient_noise * rng.standard_normal(state.deficit_loss.shape))
    norms: FloatArray = (
        size * state.gradient_factor * deficit * noise * (converging * (1.0 + shaking))[:, None]
    )
    return norms


def seed_gradient_norms(state: RunState, shaking: FloatArray, dynamics: DynamicsSettings) -> None:
    """Trainable seeds' gradient norms (what Kasmina's gradient-health gate reads):
    large while the seed has much to learn, and scaled by the run's instability."""
    trainable = IS_TRAINABLE[state.stage]
    norms = dynamics.seed_gradient_norm * (1.1 - state.learned) * (1.0 + shaking)[:, None]
    state.gradient_norm = np.where(trainable, norms, state.gradient_norm)


def validation(
    true_loss: FloatArray, dynamics: DynamicsSettings, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """([N] validation loss, [N] accuracy) at an epoch's end."""
    noise = np.exp(dynamics.validation_noise * rng.standard_normal(len(true_loss)))
    loss = true_loss * (1.0 + dynamics.validation_gap) * noise
    return loss, np.exp(-dynamics.accuracy_loss_scale * loss)
