"""Datasets the trainer runs on, held as tensors (they are small; no loader threads).

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10
  classes), a real dataset that needs no download.
- ``spirals``: three interleaved noisy spirals in 2-D, a synthetic task on which a
  narrow host runs out of capacity, so grown seeds have something to add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DATASETS = ("digits", "spirals")


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    classes: int
    image_shape: tuple[int, int, int] | None  # (channels, height, width) for image data

    @property
    def features(self) -> int:
        return int(self.train_x[0].numel())

    def to(self, device: torch.device) -> Dataset:
        return Dataset(
            self.name,
            self.train_x.to(device),
            self.train_y.to(device),
            self.val_x.to(device),
            self.val_y.to(device),
            self.classes,
            self.image_shape,
        )


def _split(
    name: str,
    x: Tensor,
    y: Tensor,
    classes: int,
    seed: int,
    val_fraction: float,
    image_shape: tuple[int, int, int] | None = None,
) -> Dataset:
    """Shuffle with ``seed``, hold out ``val_fraction``, standardise on the train split.

    Each feature's scale is floored at a tenth of the mean scale: a feature that is
    (nearly) constant in the training split, such as a digit's border pixel, would
    otherwise blow up on the validation samples where it is not.
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_val = max(1, int(len(x) * val_fraction))
    train_x, val_x = x[n_val:], x[:n_val]
    mean, std = train_x.mean(dim=0), train_x.std(dim=0)
    std = std.clamp_min(0.1 * float(std.mean()))
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    return Dataset(name, train_x, y[n_val:], val_x, y[:n_val], classes, image_shape)


def digits(seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    # Imported here: scikit-learn takes about a second to import; only digits needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    return _split("digits", x, y, 10, seed, val_fraction, image_shape=(1, 8, 8))


def spirals(
    seed: int = 0,
    samples: int = 3_000,
    arms: int = 3,
    noise: float = 0.25,
    turns: float = 1.75,
    val_fraction: float = 0.2,
) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    per_arm = samples // arms
    xs, ys = [], []
    for arm in range(arms):
        r = torch.linspace(0.15, 1.0, per_arm)
        theta = r * turns * 2 * math.pi + arm * 2 * math.pi / arms
        theta = theta + noise * torch.randn(per_arm, generator=gen) * r
        xs.append(torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=1))
        ys.append(torch.full((per_arm,), arm, dtype=torch.int64))
    return _split("spirals", torch.cat(xs), torch.cat(ys), arms, seed, val_fraction)


def load(name: str, seed: int = 0) -> Dataset:
    """A dataset by name (one of ``DATASETS``)."""
    if name == "digits":
        return digits(seed)
    if name == "spirals":
        return spirals(seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
