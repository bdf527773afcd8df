"""Every learning step behind the learning breaker and conservative mode.

A learner (PPO, the IMPALA learner) hands ``LearningGuard.step`` its optimiser and a
function that computes the loss; the guard decides whether the step may run at all and
whether its result may touch the weights:

- while conservative mode is on, learning is paused: the loss is not even computed
  (``PAUSED``), and the breaker's trial is not spent;
- while the learning breaker is open, the step is refused (``BREAKER_OPEN``); after
  its cool-down one trial step goes through;
- a loss or gradient norm that is not finite, or a loss computation (or backward) that
  raises, is a failure of the step: the gradients are dropped, the optimiser does not
  step, so the weights and the optimiser state are exactly as before
  (``NON_FINITE``, ``FAILED``). Failures in a row open the breaker, which puts the run
  in conservative mode;
- otherwise the gradients are clipped to ``max_grad_norm`` and the optimiser steps
  (``APPLIED``), which closes a half-open breaker.

With a ``GradScaler`` (float16 autocast) the loss is scaled for the backward and the
gradients unscaled before the clip, so the clip and the reported norm see the true
gradients; an overflow is a ``NON_FINITE`` step like any other, and also lowers the
scaler's scale for the next one.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch

from leyline_vocab.events import BreakerName
from oona.breaker import BreakerState, CircuitBreaker
from tamiyo_bus.risk.gate import RiskGate

log = logging.getLogger(__name__)


class LearningOutcome(StrEnum):
    APPLIED = "applied"
    PAUSED = "paused"  # conservative mode is on: nothing was computed
    BREAKER_OPEN = "breaker_open"  # the learning breaker refused the step
    NON_FINITE = "non_finite"  # loss or gradient norm not finite: no optimiser step
    FAILED = "failed"  # the loss or its backward raised: no optimiser step


_FAILURES = frozenset({LearningOutcome.NON_FINITE, LearningOutcome.FAILED})


@dataclass(frozen=True, slots=True)
class LearningGuardSettings:
    max_grad_norm: float = 0.5  # gradients are clipped to this global L2 norm

    def __post_init__(self) -> None:
        if not self.max_grad_norm > 0:
            raise ValueError("max_grad_norm must be > 0")


@dataclass(frozen=True, slots=True)
class LearningStepResult:
    outcome: LearningOutcome
    loss: float | None = None
    grad_norm: float | None = None  # before clipping
    detail: str = ""

    @property
    def applied(self) -> bool:
        return self.outcome is LearningOutcome.APPLIED


class LearningGuard:
    """Used from the learner's thread; the breaker and the pause flag may change
    from any thread."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        paused: Callable[[], bool],
        settings: LearningGuardSettings | None = None,
    ) -> None:
        self.breaker = breaker
        self.settings = settings or LearningGuardSettings()
        self._paused = paused
        self.outcomes: Counter[LearningOutcome] = Counter()

    @classmethod
    def for_gate(
        cls, gate: RiskGate, settings: LearningGuardSettings | None = None
    ) -> LearningGuard:
        """The guard of a learner in the process of ``gate``: its learning breaker, and
        paused while its conservative mode is on."""
        conservative = gate.conservative
        return cls(
            gate.breakers[BreakerName.LEARNING], lambda: conservative.learning_paused, settings
        )

    def refusal(self) -> LearningOutcome | None:
        """The refusal a step would meet now (``PAUSED``, ``BREAKER_OPEN``), or None;
        reserves no trial, so data-parallel ranks can agree before any of them steps."""
        if self._paused():
            return LearningOutcome.PAUSED
        if self.breaker.state is BreakerState.OPEN:
            return LearningOutcome.BREAKER_OPEN
        return None

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[], torch.Tensor],
        scaler: torch.amp.GradScaler | None = None,
    ) -> LearningStepResult:
        """Run one guarded update: ``loss_fn()`` computes the loss to minimise."""
        if self._paused():
            return self._count(LearningStepResult(LearningOutcome.PAUSED))
        if not self.breaker.allow():
            return self._count(LearningStepResult(LearningOutcome.BREAKER_OPEN))
        optimizer.zero_grad(set_to_none=True)
        try:
            result = self._update(optimizer, loss_fn, scaler)
        except Exception as error:
            result = LearningStepResult(
                LearningOutcome.FAILED, detail=f"{type(error).__name__}: {error}"[:500]
            )
        if result.outcome in _FAILURES:
            optimizer.zero_grad(set_to_none=True)
            self.breaker.record_failure()
            log.warning("learning step not applied (%s): %s", result.outcome, result.detail)
        else:
            self.breaker.record_success()
        return self._count(result)

    def _update(
        self,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[], torch.Tensor],
        scaler: torch.amp.GradScaler | None,
    ) -> LearningStepResult:
        loss = loss_fn()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            return LearningStepResult(LearningOutcome.NON_FINITE, loss_value, detail="loss")
        if scaler is None:
            loss.backward()  # type: ignore[no-untyped-call]
        else:
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, self.settings.max_grad_norm))
        if not math.isfinite(grad_norm):
            if scaler is not None:
                scaler.update()
            return LearningStepResult(
                LearningOutcome.NON_FINITE, loss_value, grad_norm, detail="gradient norm"
            )
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        return LearningStepResult(LearningOutcome.APPLIED, loss_value, grad_norm)

    def _count(self, result: LearningStepResult) -> LearningStepResult:
        self.outcomes[result.outcome] += 1
        return result
