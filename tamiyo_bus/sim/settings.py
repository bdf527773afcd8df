"""The simulator's settings: the episode, the host, the hidden dynamics and the
simulated risk engine, each a frozen dataclass (docs/learning.md, "The simulator")."""

from __future__ import annotations

from dataclasses import dataclass, field

from tamiyo_bus.kasmina.settings import KasminaSettings
from tamiyo_bus.learning.reward import RewardSettings
from tamiyo_bus.reports.windows import WindowSettings
from tamiyo_bus.tolaria.lr import LRSettings

DEFAULT_LAYER_KINDS = ("conv2d",) * 3 + ("linear",) * 5


@dataclass(frozen=True)
class HostSettings:
    """The simulated host: one layer per kind, all ``layer_width`` wide; a linear layer
    holds ``width**2 + width`` parameters, a 3x3 conv2d layer ``9 * width**2 + width``."""

    layer_kinds: tuple[str, ...] = DEFAULT_LAYER_KINDS
    layer_width: int = 128
    batch_size: int = 32
    step_ms: float = 20.0  # simulated time of one optimiser step (latency, samples/s)
    hook_ms: float = 0.2  # what Tamiyo and Kasmina add to a step, per live seed plus one

    def __post_init__(self) -> None:
        if not self.layer_kinds or self.layer_width < 1:
            raise ValueError("the host needs at least one layer of positive width")


@dataclass(frozen=True)
class DynamicsSettings:
    """The hidden model of a training run (see docs/learning.md for the equations).

    Losses are in nats; ``*_steps`` are 1/e times in optimiser steps at learning-rate
    scale 1; ``*_per_risk`` scale with a blueprint's risk (0..1).
    """

    initial_loss: float = 2.3
    floor_loss: float = 0.25
    host_learning_steps: float = 150.0
    deficit_layers_min: int = 1
    deficit_layers_max: int = 2
    deficit_loss_min: float = 0.08
    deficit_loss_max: float = 0.20
    deficit_need_min: float = 0.05  # adapter parameters / layer parameters that cure it
    deficit_need_max: float = 0.30
    low_rank_efficiency: float = 0.5  # share of a deficit a low-rank adapter can cure
    seed_learning_steps: float = 40.0
    untrained_seed_loss: float = 0.08  # loss per unit alpha of an untrained seed
    untrained_seed_loss_per_risk: float = 0.2
    misplaced_seed_loss: float = 0.01  # a fully blended seed where no deficit is
    batch_loss_noise: float = 0.1  # log-normal sigma of a batch loss
    validation_noise: float = 0.01
    validation_gap: float = 0.05  # validation loss = true loss * (1 + gap)
    accuracy_loss_scale: float = 1.0  # accuracy = exp(-scale * validation loss)
    gradient_norm_per_sqrt_parameter: float = 0.01  # a layer's norm, before its factors
    converged_gradient_share: float = 0.3  # of a layer's norm left once the host converged
    gradient_noise: float = 0.3  # log-normal sigma of a layer's gradient norm
    layer_gradient_spread: float = 0.15  # hidden per-layer factor in [1/(1+s), 1+s]
    deficit_gradient_gain_per_loss: float = 8.0  # norm x (1 + gain * uncured deficit)
    seed_gradient_norm: float = 2.0  # an untrained seed's gradient norm
    instability_onset_per_step: float = 0.0025
    instability_steps_min: int = 20
    instability_steps_max: int = 60
    instability_level_min: float = 0.5
    instability_level_max: float = 1.5
    lr_instability_per_scale: float = 0.25  # instability per unit of lr scale above 1
    germination_spike_per_instability: float = 0.5  # loss fraction per instability level
    blend_spike_probability_per_risk: float = 1.0
    blend_spike_per_risk: float = 1.0  # loss fraction per unit risk
    spike_decay_steps: float = 20.0
    isolation_violation_per_risk_step: float = 0.003

    def __post_init__(self) -> None:
        if not 0 <= self.deficit_layers_min <= self.deficit_layers_max:
            raise ValueError("need 0 <= deficit_layers_min <= deficit_layers_max")
        if not 0 < self.deficit_need_min <= self.deficit_need_max:
            raise ValueError("need 0 < deficit_need_min <= deficit_need_max")
        if not 0 < self.instability_steps_min <= self.instability_steps_max:
            raise ValueError("need 0 < instability_steps_min <= instability_steps_max")


@dataclass(frozen=True)
class WatchdogSettings:
    """The simulator's stand-in for the risk engine's loss alarms.

    A blended seed whose run's loss (Kasmina's running average) rose by
    ``rollback_loss_increase`` (relative) above the loss when its blending began is
    rolled back; a loss above ``emergency_loss_ratio`` times the run's best, with a
    seed active, triggers an EMERGENCY.
    """

    rollback_loss_increase: float = 0.15
    emergency_loss_ratio: float = 2.0


@dataclass(frozen=True)
class SimSettings:
    """One episode is ``epochs`` x ``steps_per_epoch`` optimiser steps; the policy is
    asked every ``decision_every_steps``-th step, the run goes on alone in between."""

    epochs: int = 12
    steps_per_epoch: int = 100
    decision_every_steps: int = 4
    loss_ema_decay: float = 0.9  # the packet's training_loss, as Tolaria smooths it
    gradient_norm_ema_decay: float = 0.8  # per packet, its gradient_norm_ema, as Tolaria's
    host: HostSettings = field(default_factory=HostSettings)
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    kasmina: KasminaSettings = field(default_factory=KasminaSettings)
    lr: LRSettings = field(default_factory=LRSettings)  # base_lr and Tamiyo's scale band
    windows: WindowSettings = field(default_factory=WindowSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.decision_every_steps < 1:
            raise ValueError("epochs, steps_per_epoch and decision_every_steps must be >= 1")
        if self.total_steps % self.decision_every_steps:
            raise ValueError("decision_every_steps must divide the episode's steps")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch
