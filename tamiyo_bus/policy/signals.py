"""Derived inputs: the comparisons a policy would otherwise have to learn to make.

A layer short of capacity shows a sustained gradient norm above what its size
explains; a run turning unstable shows a global gradient norm well above its recent
average. Both are ratios across nodes or across time, which the running
normalisation (one mean and scale per column) cannot express, so the graph builder
computes them from the packet's norms and their running averages:

- ``gradient_signal`` per layer: ``log(norm / sqrt(parameters))`` minus its median
  over the layers that report one. Per square root of the parameters, because a
  gradient norm grows with the root of the number of entries it sums; against the
  median, so that what the whole run does (converging, shaking) cancels.
- ``gradient_surge``: ``log(gradient_norm / gradient_norm_ema)``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def gradient_signal(norms: FloatArray, parameters: FloatArray) -> FloatArray:
    """[L] each layer's log norm per square root of its parameters, relative to the
    median layer's; nan where a layer has no positive norm (absent)."""
    known = np.isfinite(norms) & (norms > 0) & (parameters > 0)
    signal = np.full(norms.shape, np.nan, dtype=np.float32)
    if not known.any():
        return signal
    per_root = np.log(norms[known]) - 0.5 * np.log(parameters[known])
    signal[known] = per_root - np.median(per_root)
    return signal


def gradient_surge(norm: float, average: float) -> float:
    """Log ratio of the gradient norm to its running average; nan when either is
    missing or not positive."""
    if not (norm > 0 and average > 0 and math.isfinite(norm) and math.isfinite(average)):
        return math.nan
    return math.log(norm / average)
