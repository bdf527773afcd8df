"""Seed slots on a host layer, and the forward pass that blends seeds in.

A host model puts a :class:`SeedSite` after each layer that may grow. With no live
seed the site returns its input unchanged (one attribute check). Seed modules are
held outside the host's module tree, so the host's parameters, optimiser and
checkpoints are exactly the host's.

Gradient isolation while a seed is TRAINING: the seed reads a detached copy of the
activation and contributes ``s - s.detach()``, so the forward value is unchanged and
the host receives no gradient through the seed, while the seed's parameters still get
the gradient of the loss at that activation. Each step the site checks this with two
gradient hooks: the gradient leaving the site towards the host must equal, exactly,
the gradient arriving from above through the isolated sum; any difference (or a NaN)
is a violation, counted and acted on by the executor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import BLENDED, ISOLATED


@dataclass(eq=False)
class Seed:
    """One slot's runtime state (mutable; owned by the executor)."""

    seed_id: str
    layer_id: str
    layer_depth: int
    stage: pb.SeedLifecycleStage.ValueType = pb.SEED_STAGE_DORMANT
    module: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    blueprint_id: str = ""
    blueprint_risk: float = 0.0
    parameters: int = 0
    lr_ratio: float = 1.0
    alpha: float = 0.0
    blend_method: pb.BlendMethod.ValueType = pb.BLEND_METHOD_UNKNOWN
    blend_ramp_steps: int = 0
    blend_progress_steps: int = 0
    blend_baseline_loss: float = math.nan
    germinated_step: int = 0
    stage_entered_step: int = 0
    gradient_norm: float = math.nan
    isolation_violations: int = 0
    isolation_checks: int = 0


class SeedSite(nn.Module):
    """The seed slots after one host layer (``width`` features or channels).

    ``depth`` and ``kind`` are the layer's, as in the host topology Tamiyo sees.
    """

    def __init__(self, layer_id: str, depth: int, width: int, kind: str) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.depth = depth
        self.width = width
        self.kind = kind
        self.seeds: list[Seed] = []
        self._isolated: tuple[Seed, ...] = ()
        self._blended: tuple[Seed, ...] = ()
        self._pending_violation: Tensor | None = None

    def refresh(self) -> None:
        """Recompute which seeds take part in the forward (after any stage change)."""
        self._isolated = tuple(s for s in self.seeds if s.stage in ISOLATED)
        self._blended = tuple(s for s in self.seeds if s.stage in BLENDED)

    @staticmethod
    def isolate(x: Tensor) -> Tensor:
        """What a TRAINING seed reads: the activation cut off from the host's graph."""
        return x.detach()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` plus the blended seeds' weighted deltas; isolated seeds add exactly 0
        (and are skipped without autograd, e.g. in evaluation, where they cannot learn)."""
        isolated = self._isolated if torch.is_grad_enabled() else ()
        if not isolated and not self._blended:
            return x
        out = x
        if isolated:
            host = x.view_as(x)
            seed_input = self.isolate(host)
            delta = sum(_run(s, seed_input) for s in isolated)
            assert isinstance(delta, Tensor)
            out = host + (delta - delta.detach())
            if host.requires_grad:
                self._watch(host, out)
        for seed in self._blended:
            out = out + seed.alpha * _run(seed, x)
        return out

    def _watch(self, host: Tensor, isolated_sum: Tensor) -> None:
        """Compare the gradient at the host activation with the one above the sum."""
        above: list[Tensor] = []

        def record(grad: Tensor) -> None:
            above.append(grad)

        def compare(grad: Tensor) -> None:
            differs = (
                (grad != above[0]).any()
                if above
                else torch.ones((), dtype=torch.bool, device=grad.device)
            )
            pending = self._pending_violation
            self._pending_violation = differs if pending is None else pending | differs

        isolated_sum.register_hook(record)  # type: ignore[no-untyped-call]
        host.register_hook(compare)  # type: ignore[no-untyped-call]

    def take_violation(self) -> bool | None:
        """Whether the last backward broke isolation (None: nothing was checked)."""
        pending = self._pending_violation
        if pending is None:
            return None  # no assignment: a module's setattr is slow, and this runs each step
        self._pending_violation = None
        return bool(pending)


def _run(seed: Seed, x: Tensor) -> Tensor:
    assert seed.module is not None
    out: Tensor = seed.module(x)
    return out
