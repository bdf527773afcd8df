"""LearningGuard with a GradScaler (float16 mixed precision): the clip sees unscaled
gradients, and an overflow is a non-finite step that lowers the loss scale and leaves
the weights as they were. Run on the CPU's GradScaler, which is the CUDA one's logic."""

from __future__ import annotations

import copy

import torch

from oona.breaker import BreakerSettings, CircuitBreaker
from tamiyo_bus.learning.guard import LearningGuard, LearningGuardSettings, LearningOutcome

from ..risk.helpers import Clock


def setup() -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(8, 4)


def guard() -> LearningGuard:
    breaker = CircuitBreaker("learning", BreakerSettings(3, 1_000.0, 1), clock=Clock())
    return LearningGuard(breaker, lambda: False, LearningGuardSettings(0.5))


def test_a_scaled_step_applies_the_same_clipped_update_as_an_unscaled_one() -> None:
    plain_model, plain_optimizer, x = setup()
    scaled_model = copy.deepcopy(plain_model)
    scaled_optimizer = torch.optim.SGD(scaled_model.parameters(), lr=0.1)
    plain = guard().step(plain_optimizer, lambda: plain_model(x).pow(2).mean() * 10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled = guard().step(scaled_optimizer, lambda: scaled_model(x).pow(2).mean() * 10, scaler)
    assert plain.applied and scaled.applied
    assert plain.grad_norm is not None and scaled.grad_norm is not None
    assert abs(plain.grad_norm - scaled.grad_norm) < 1e-4 * plain.grad_norm
    for a, b in zip(plain_model.parameters(), scaled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_an_overflow_is_not_applied_and_lowers_the_scale() -> None:
    model, optimizer, x = setup()
    before = copy.deepcopy(model.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    result = guard().step(optimizer, lambda: model(x).pow(2).mean() * 1e36, scaler)
    assert result.outcome is LearningOutcome.NON_FINITE
    assert scaler.get_scale() == 512.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    healthy = guard().step(optimizer, lambda: model(x).pow(2).mean(), scaler)
    assert healthy.applied  # the scaler is ready for the next step
