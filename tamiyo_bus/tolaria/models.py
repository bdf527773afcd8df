"""Host models with seed sites, and the topology Tamiyo sees of them.

Each host lists its layers in data-flow order; every layer but the classifier head is
followed by a :class:`SeedSite` where Kasmina can grow seeds. ``host_topology`` reads
the real modules (parameter names and counts, layer kinds, edges), so the policy's
graph describes the network that is actually training.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from tamiyo_bus.kasmina.site import SeedSite
from tamiyo_bus.policy.topology import ActivationSpec, HostTopology, LayerSpec, ParameterSpec

MODELS = ("mlp", "cnn")
POOLED = 4  # the CNN's feature map side before its head


@dataclass(frozen=True)
class HostLayer:
    layer_id: str
    kind: str  # "linear" or "conv2d": what blueprints must fit
    module: nn.Module
    activation: str  # the nonlinearity after it ("none" for the head)
    site: SeedSite | None


class HostModel(nn.Module, ABC):
    """A host network: its layers in order, and the seed sites between them."""

    @abstractmethod
    def host_layers(self) -> list[HostLayer]: ...

    @property
    def sites(self) -> list[SeedSite]:
        return [layer.site for layer in self.host_layers() if layer.site is not None]


class HostMLP(HostModel):
    """Linear -> GELU blocks, a seed site after each, then a linear classifier."""

    def __init__(self, in_features: int, hidden: Sequence[int], classes: int) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        self.blocks = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.seed_sites = nn.ModuleList(
            SeedSite(f"block{i}", i, width, "linear") for i, width in enumerate(hidden)
        )
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for block, site in zip(self.blocks, self.seed_sites, strict=True):
            x = site(nn.functional.gelu(block(x)))
        out: Tensor = self.head(x)
        return out

    def host_layers(self) -> list[HostLayer]:
        layers = [
            HostLayer(site.layer_id, "linear", block, "gelu", site)
            for block, site in zip(self.blocks, self.seed_sites, strict=True)
            if isinstance(site, SeedSite)
        ]
        return [*layers, HostLayer("head", "linear", self.head, "none", None)]


class HostCNN(HostModel):
    """3x3 conv -> GELU blocks with seed sites, 4x4 average pooling, linear head.

    Pooling to 4x4 rather than to 1x1 keeps where a stroke is, which is most of what
    distinguishes one 8x8 digit from another.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], channels: Sequence[int], classes: int
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        widths = (image_shape[0], *channels)
        self.blocks = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in itertools.pairwise(widths)
        )
        self.seed_sites = nn.ModuleList(
            SeedSite(f"conv{i}", i, width, "conv2d") for i, width in enumerate(channels)
        )
        self.head = nn.Linear(widths[-1] * POOLED * POOLED, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, *self.image_shape)
        for block, site in zip(self.blocks, self.seed_sites, strict=True):
            x = site(nn.functional.gelu(block(x)))
        out: Tensor = self.head(nn.functional.adaptive_avg_pool2d(x, POOLED).flatten(1))
        return out

    def host_layers(self) -> list[HostLayer]:
        layers = [
            HostLayer(site.layer_id, "conv2d", block, "gelu", site)
            for block, site in zip(self.blocks, self.seed_sites, strict=True)
            if isinstance(site, SeedSite)
        ]
        return [*layers, HostLayer("head", "linear", self.head, "none", None)]


def build_host(
    name: str,
    *,
    features: int,
    classes: int,
    image_shape: tuple[int, int, int] | None,
    width: int,
    depth: int,
) -> HostModel:
    """A host by name (one of ``MODELS``): ``depth`` hidden layers of ``width``."""
    if name == "mlp":
        return HostMLP(features, [width] * depth, classes)
    if name == "cnn":
        if image_shape is None:
            raise ValueError("the cnn host needs an image dataset (digits)")
        return HostCNN(image_shape, [width] * depth, classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def host_topology(model: HostModel) -> HostTopology:
    """The policy's view of ``model``: layers, data-flow edges, activations, parameters.

    Parameter ids are ``<layer id>.<parameter name>``, the keys under which the trainer
    reports ``parameter/<id>/gradient_norm``.
    """
    layers = model.host_layers()
    layer_specs = tuple(
        LayerSpec(
            layer.layer_id, layer.kind, depth, sum(p.numel() for p in layer.module.parameters())
        )
        for depth, layer in enumerate(layers)
    )
    edges = tuple((a.layer_id, b.layer_id) for a, b in itertools.pairwise(layers))
    activations = tuple(
        ActivationSpec(f"{layer.layer_id}.out", layer.layer_id, layer.activation)
        for layer in layers
    )
    parameters = tuple(
        ParameterSpec(f"{layer.layer_id}.{name}", f"{layer.layer_id}.out", name, p.numel())
        for layer in layers
        for name, p in layer.module.named_parameters()
    )
    return HostTopology(layer_specs, edges, activations, parameters)


def named_host_parameters(model: HostModel) -> list[tuple[str, nn.Parameter]]:
    """``(parameter id, parameter)`` in topology order."""
    return [
        (f"{layer.layer_id}.{name}", p)
        for layer in model.host_layers()
        for name, p in layer.module.named_parameters()
    ]
