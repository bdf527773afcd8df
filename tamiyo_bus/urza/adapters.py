"""The adapter modules a blueprint's constructor spec builds.

Every adapter maps a host activation to a *delta* of the same shape; the seed slot
adds the delta (scaled by alpha) to the activation. The last projection starts at zero
(or tiny, with ``init_scale``), so a freshly built seed changes nothing until it has
learned something.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tamiyo_bus.urza.blueprint import AdapterKind, ConstructorSpec

INIT_SCALE = "init_scale"  # std of the output projection's initial weights (0: zeros)


def _init_output(layer: nn.Linear | nn.Conv2d, init_scale: float) -> None:
    with torch.no_grad():
        if init_scale > 0.0:
            layer.weight.normal_(0.0, init_scale)
        else:
            layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()


class ResidualMLP(nn.Module):
    def __init__(self, width: int, hidden: int, init_scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.up = nn.Linear(hidden, width)
        _init_output(self.up, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(nn.functional.gelu(self.down(x)))  # type: ignore[no-any-return]


class LowRank(nn.Module):
    def __init__(self, width: int, rank: int, init_scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width)
        _init_output(self.up, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))  # type: ignore[no-any-return]


class GatedMLP(nn.Module):
    """A residual MLP whose contribution a learned per-sample gate can close."""

    def __init__(self, width: int, hidden: int, init_scale: float) -> None:
        super().__init__()
        self.body = ResidualMLP(width, hidden, init_scale)
        self.gate = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate: Tensor = torch.sigmoid(self.gate(x))
        body: Tensor = self.body(x)
        return gate * body


class ConvResidual(nn.Module):
    def __init__(self, channels: int, hidden: int, init_scale: float) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, hidden, kernel_size=3, padding=1)
        self.project = nn.Conv2d(hidden, channels, kernel_size=1)
        _init_output(self.project, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(nn.functional.gelu(self.mix(x)))  # type: ignore[no-any-return]


def build_adapter(spec: ConstructorSpec, width: int, *, init_scale: float = 0.0) -> nn.Module:
    """The adapter of ``spec`` for a host layer of ``width`` features (or channels)."""
    if spec.kind is AdapterKind.RESIDUAL_MLP:
        return ResidualMLP(width, spec.size, init_scale)
    if spec.kind is AdapterKind.LOW_RANK:
        return LowRank(width, spec.size, init_scale)
    if spec.kind is AdapterKind.GATED_MLP:
        return GatedMLP(width, spec.size, init_scale)
    return ConvResidual(width, spec.size, init_scale)


def parameter_count(spec: ConstructorSpec, width: int) -> int:
    """Trainable parameters of the adapter of ``spec`` at ``width``."""
    return sum(p.numel() for p in build_adapter(spec, width).parameters())
