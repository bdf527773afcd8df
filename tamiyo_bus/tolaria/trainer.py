"""Tolaria's training loop with Tamiyo on the step path (3A: in-process, every step).

One optimiser step:

    forward, backward, clip, host optimiser step, seeds' optimiser steps (Kasmina),
    LR schedule step                                                  -> train_ms
    [Tamiyo.wants_state] packet -> Tamiyo.evaluate_step -> Kasmina.apply_command
    Kasmina.advance_alpha -> Kasmina.finalize_step                    -> tamiyo_ms

Without a controller and executor the same loop runs plain (the overhead benchmark's
baseline). Tamiyo says on which steps she wants the state (her cadence, or a decision
ready to hand over); on the others no packet is built and nothing is asked, while
alpha still advances and ``finalize_step`` still runs. Observers receive plain
records; they must not block (the demo's progress bar and recorder only append and
print).

``timing_metrics`` off leaves the measured times (step and hook latency, samples/s,
Kasmina's latencies) out of the packet: with them, two runs of the same seed show the
policy different inputs, so reproducible runs turn them off.

The packet's ``training_loss`` is a running average of the batch losses
(``loss_ema_decay``); the batch's own loss is ``training_metrics["loss"]``. A single
small batch's loss swings by tens of percent from one step to the next, which would
read as a loss spike to anyone watching the packet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.nn import functional as F

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.executor import ApplyResult, Kasmina
from tamiyo_bus.reports.windows import MODEL_PARAMETERS_METRIC
from tamiyo_bus.tolaria.data import Dataset
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tamiyo_bus.tolaria.models import HostModel
from tamiyo_bus.tolaria.packet import PacketBuilder

EVAL_BATCH = 1_024


class StepController(Protocol):
    """Tamiyo's step-path entry points."""

    def wants_state(self, step: int) -> bool: ...

    def evaluate_step(self, packet: pb.SystemStatePacket) -> pb.AdaptationCommand | None: ...


@dataclass(frozen=True)
class TolariaSettings:
    epochs: int = 12
    batch_size: int = 32
    max_steps: int = 0  # stop after this many optimiser steps (0: run every epoch)
    weight_decay: float = 1e-4
    grad_clip_norm: float = 5.0
    loss_ema_decay: float = 0.9  # smoothing of the packet's training_loss (batch losses)
    gradient_norm_ema_decay: float = 0.8  # per packet, of the packet's gradient_norm_ema
    timing_metrics: bool = True  # measured times in the packet (off for reproducible runs)
    seed: int = 0
    lr: LRSettings = field(default_factory=LRSettings)


@dataclass(frozen=True, slots=True)
class StepRecord:
    step: int
    epoch: int
    loss: float
    train_ms: float  # forward, backward and optimiser steps
    tamiyo_ms: float  # everything Tamiyo and Kasmina add to the step (0 without them)
    decision_ms: float  # evaluate_step alone; nan on steps Tamiyo did not want
    learning_rate: float
    live_seeds: int
    packet: pb.SystemStatePacket | None  # what Tamiyo was shown (steps she wanted it)
    command: pb.AdaptationCommand | None  # what she handed over (None: nothing)
    result: ApplyResult | None


@dataclass(frozen=True, slots=True)
class EpochRecord:
    epoch: int
    step: int  # optimiser steps done when the epoch ended
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    live_seeds: int
    seed_parameters: int
    state: pb.SystemStatePacket  # the run's state at the end of the epoch


class TrainingObserver(Protocol):
    def on_step(self, record: StepRecord) -> None: ...

    def on_epoch_end(self, record: EpochRecord) -> None: ...


class Tolaria:
    """Trains ``model`` on ``data``; with ``controller`` and ``kasmina``, grows it."""

    def __init__(
        self,
        model: HostModel,
        data: Dataset,
        settings: TolariaSettings,
        *,
        lr: LRController,
        training_run_id: str,
        kasmina: Kasmina | None = None,
        controller: StepController | None = None,
        observers: Sequence[TrainingObserver] = (),
    ) -> None:
        if (controller is None) != (kasmina is None):
            raise ValueError("a controller needs Kasmina to apply its commands, and vice versa")
        self.model = model
        self.data = data
        self.settings = settings
        self.lr = lr
        self.kasmina = kasmina
        self.controller = controller
        self.observers = tuple(observers)
        self.packets = PacketBuilder(
            model, training_run_id, gradient_norm_ema_decay=settings.gradient_norm_ema_decay
        )
        self.host_parameters = self.packets.parameters
        self.host_parameter_count = sum(p.numel() for p in self.host_parameters)
        self.optimizer = torch.optim.AdamW(
            self.host_parameters, lr=lr.learning_rate, weight_decay=settings.weight_decay
        )
        lr.attach(self.optimizer, 1.0)
        self.device = data.train_x.device
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.step = 0
        self.epoch = 0
        self.validation_loss = math.nan
        self.validation_accuracy = math.nan
        self._last_hook_ms = math.nan
        self._samples_per_s = math.nan
        self._loss = self._loss_ema = self._grad_norm = self._train_ms = math.nan
        self._parameter_norms: torch.Tensor | None = None

    # --------------------------------------------------------------- the loop

    def run(self) -> list[EpochRecord]:
        """Train every epoch (or ``max_steps``); one EpochRecord per finished epoch."""
        epochs: list[EpochRecord] = []
        for epoch in range(self.settings.epochs):
            self.epoch = epoch
            record = self._epoch()
            epochs.append(record)
            for observer in self.observers:
                observer.on_epoch_end(record)
            if self._done():
                break
        return epochs

    def _done(self) -> bool:
        return 0 < self.settings.max_steps <= self.step

    def _epoch(self) -> EpochRecord:
        started = time.perf_counter()
        self.model.train()
        n = len(self.data.train_x)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        batch = self.settings.batch_size
        loss_sum = 0.0
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for start in range(0, n - batch + 1, batch):
            index = order[start : start + batch]
            x, y = self.data.train_x[index], self.data.train_y[index]
            loss, hits = self.train_step(x, y)
            loss_sum += loss * len(y)
            correct += hits
            seen += len(y)
            if self._done():
                break
        val_loss, val_acc = self.evaluate()
        self.validation_loss, self.validation_accuracy = val_loss, val_acc
        live = self.kasmina.live_seeds if self.kasmina else []
        train_loss = loss_sum / max(seen, 1)
        state = self.packets.build(
            epoch=self.epoch,
            step=self.step,
            training_loss=train_loss,
            validation_loss=val_loss,
            validation_accuracy=val_acc,
            metrics={MODEL_PARAMETERS_METRIC: float(self._model_parameters())},
        )
        if self.kasmina is not None:
            self.kasmina.fill_seed_states(state)
        return EpochRecord(
            epoch=self.epoch,
            step=self.step,
            train_loss=train_loss,
            train_accuracy=float(correct) / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
            seconds=time.perf_counter() - started,
            live_seeds=len(live),
            seed_parameters=sum(s.parameters for s in live),
            state=state,
        )

    def _model_parameters(self) -> int:
        """Host plus live seeds: what the model costs now."""
        seeds = sum(s.parameters for s in self.kasmina.live_seeds) if self.kasmina else 0
        return self.host_parameter_count + seeds

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One optimiser step with Tamiyo in the loop; returns (loss, correct count)."""
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        if self.kasmina is not None:
            self.kasmina.step_seeds()
        self.lr.advance()
        hits = (logits.detach().argmax(dim=1) == y).sum()
        loss_value = float(loss.detach())
        trained = time.perf_counter()
        train_ms = (trained - started) * 1000.0
        self._samples_per_s = len(y) / max(trained - started, 1e-9)
        self._loss, self._grad_norm, self._train_ms = loss_value, grad_norm, train_ms
        decay = self.settings.loss_ema_decay
        self._loss_ema = (
            loss_value
            if math.isnan(self._loss_ema)
            else decay * self._loss_ema + (1 - decay) * loss_value
        )

        packet: pb.SystemStatePacket | None = None
        command: pb.AdaptationCommand | None = None
        result: ApplyResult | None = None
        decision_ms = math.nan
        if self.kasmina is not None and self.controller is not None:
            if self.controller.wants_state(self.step):
                packet = self.state_packet()
                asked = time.perf_counter()
                command = self.controller.evaluate_step(packet)
                decision_ms = (time.perf_counter() - asked) * 1000.0
                if command is not None:
                    result = self.kasmina.apply_command(command)
            self.kasmina.advance_alpha()
            self.kasmina.finalize_step(self.step, loss_value)
            tamiyo_ms = (time.perf_counter() - trained) * 1000.0
            self._last_hook_ms = tamiyo_ms - (0.0 if math.isnan(decision_ms) else decision_ms)
        else:
            tamiyo_ms = 0.0
        record = StepRecord(
            step=self.step,
            epoch=self.epoch,
            loss=loss_value,
            train_ms=train_ms,
            tamiyo_ms=tamiyo_ms,
            decision_ms=decision_ms,
            learning_rate=self.lr.learning_rate,
            live_seeds=len(self.kasmina.live_seeds) if self.kasmina else 0,
            packet=packet,
            command=command,
            result=result,
        )
        self.step += 1
        for observer in self.observers:
            observer.on_step(record)
        return loss_value, hits

    def _clip_gradients(self) -> float:
        """Clip the host's gradients to ``grad_clip_norm``; returns the norm before.

        The per-parameter norms are computed once (one fused ``_foreach_norm``) and
        serve both the clipping and the packet's ``parameter/*/gradient_norm``, so
        reporting them costs the step nothing extra.
        """
        grads = [p.grad for p in self.host_parameters if p.grad is not None]
        if len(grads) != len(self.host_parameters):
            self._parameter_norms = None
            return float(torch.nn.utils.clip_grad_norm_(grads, self.settings.grad_clip_norm))
        norms = torch.stack(torch._foreach_norm(grads))
        total = torch.linalg.vector_norm(norms)
        scale = (self.settings.grad_clip_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale)
        self._parameter_norms = norms
        return float(total)

    def state_packet(self) -> pb.SystemStatePacket:
        """The SystemStatePacket of the current step (also usable before the first one,
        e.g. to warm Tamiyo up: gradient metrics are then absent)."""
        assert self.kasmina is not None
        metrics = {
            "loss": self._loss,
            "gradient_norm": self._grad_norm,
            "learning_rate": self.lr.learning_rate,
            MODEL_PARAMETERS_METRIC: float(self._model_parameters()),
            **self.kasmina.step_metrics(timings=self.settings.timing_metrics),
        }
        if self.settings.timing_metrics:
            metrics["samples_per_s"] = self._samples_per_s
            metrics["step_latency_ms"] = self._train_ms
            metrics["hook_latency_ms"] = self._last_hook_ms
        packet = self.packets.build(
            epoch=self.epoch,
            step=self.step,
            training_loss=self._loss_ema,
            validation_loss=self.validation_loss,
            validation_accuracy=self.validation_accuracy,
            metrics=metrics,
            parameter_norms=self._parameter_norms,
        )
        self.kasmina.fill_seed_states(packet)
        return packet

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation loss and accuracy (seeds included as they stand)."""
        self.model.eval()
        total, correct = 0.0, 0
        x_all, y_all = self.data.val_x, self.data.val_y
        for start in range(0, len(x_all), EVAL_BATCH):
            x, y = x_all[start : start + EVAL_BATCH], y_all[start : start + EVAL_BATCH]
            logits = self.model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
        self.model.train()
        return total / len(x_all), correct / len(x_all)
