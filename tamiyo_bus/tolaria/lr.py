"""The one LR controller: every learning-rate change in a run goes through it.

The learning rate is ``base_lr x schedule(step) x tamiyo_scale``: the trainer's own
schedule (linear warm-up, then cosine decay to a floor) and the cumulative scale of
Tamiyo's OPTIMIZER commands, clamped to a band. The host optimiser and every seed
optimiser are attached with a ratio, so a seed's rate follows the host's. Nothing else
writes ``param_group["lr"]``: two writers would silently undo each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LRSettings:
    base_lr: float = 3e-3
    warmup_steps: int = 50
    total_steps: int = 1_000  # where the cosine decay reaches its floor
    min_lr_ratio: float = 0.05  # the floor, relative to base_lr
    min_tamiyo_scale: float = 0.1  # band of the cumulative scale Tamiyo may apply
    max_tamiyo_scale: float = 10.0


def schedule_factor(step: int, settings: LRSettings) -> float:
    """Warm-up then cosine: 0 < factor <= 1 (pure, so it is tested on its own)."""
    if settings.warmup_steps > 0 and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.total_steps - settings.warmup_steps, 1)
    t = min(max((step - settings.warmup_steps) / span, 0.0), 1.0)
    floor = settings.min_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class LRController:
    """Owns the learning rate of every attached optimiser."""

    def __init__(self, settings: LRSettings) -> None:
        self.settings = settings
        self.step = 0
        self.tamiyo_scale = 1.0
        self._attached: dict[int, tuple[torch.optim.Optimizer, float]] = {}
        self.scale_changes = 0

    @property
    def learning_rate(self) -> float:
        return self.settings.base_lr * schedule_factor(self.step, self.settings) * self.tamiyo_scale

    def attach(self, optimizer: torch.optim.Optimizer, ratio: float) -> None:
        """Take over ``optimizer``'s rate: from now on it is ``ratio x learning_rate``."""
        self._attached[id(optimizer)] = (optimizer, ratio)
        self._write(optimizer, ratio, self.learning_rate)

    def detach(self, optimizer: torch.optim.Optimizer) -> None:
        self._attached.pop(id(optimizer), None)

    def apply_scale(self, scale: float) -> float:
        """Tamiyo's OPTIMIZER command: multiply the scale (clamped); returns the new rate."""
        s = self.settings
        self.tamiyo_scale = min(max(self.tamiyo_scale * scale, s.min_tamiyo_scale),
                                s.max_tamiyo_scale)  # fmt: skip
        self.scale_changes += 1
        self._push()
        return self.learning_rate

    def advance(self) -> None:
        """One optimiser step along the schedule."""
        self.step += 1
        self._push()

    def _push(self) -> None:
        rate = self.learning_rate
        for optimizer, ratio in self._attached.values():
            self._write(optimizer, ratio, rate)

    @staticmethod
    def _write(optimizer: torch.optim.Optimizer, ratio: float, rate: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = rate * ratio
