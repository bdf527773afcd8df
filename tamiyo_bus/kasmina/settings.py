"""Kasmina's settings: one frozen dataclass, units in the names."""

from __future__ import annotations

from dataclasses import dataclass, field

from tamiyo_bus.kasmina.blending import WarmupHold
from tamiyo_bus.kasmina.lifecycle import GateSettings


@dataclass(frozen=True)
class KasminaSettings:
    """How many slots each layer has, the lifecycle's timings and the telemetry bound.

    Steps are optimiser steps.
    """

    slots_per_layer: int = 1
    embargo_steps: int = 50  # a culled slot stays embargoed this long before it resets
    pause_steps: int = 10  # a PAUSE freezes blending and germination; a new PAUSE restarts it
    loss_ema_decay: float = 0.9  # smoothing of the training loss the stability gate reads
    telemetry_queue_max_items: int = 4_096  # steps of telemetry held for the publisher
    # A step's telemetry record is sent every this many steps, and on every step with a
    # command or a lifecycle change: a quiet step then costs the trainer next to nothing.
    telemetry_every_steps: int = 10
    latency_window_steps: int = 4_096  # apply/finalize latencies kept for percentiles
    seed_default_lr_ratio: float = 1.0  # seed LR / host LR unless a command sets lr_ratio
    # a command applies only this close to the step it was issued for (its global_step)
    command_step_window_steps: int = 2
    gates: GateSettings = field(default_factory=GateSettings)
    warmup_hold: WarmupHold = field(default_factory=WarmupHold)

    def __post_init__(self) -> None:
        if self.slots_per_layer < 1 or self.telemetry_every_steps < 1:
            raise ValueError("slots_per_layer and telemetry_every_steps must be at least 1")
        if self.command_step_window_steps < 0:
            raise ValueError("command_step_window_steps must be >= 0")
        if not 0.0 <= self.loss_ema_decay < 1.0:
            raise ValueError("loss_ema_decay must lie in [0, 1)")
