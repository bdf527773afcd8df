"""Alpha schedules: how a seed's weight in the host's forward ramps from 0 to 1.

Pure functions of (progress, ramp length), so a schedule is testable on its own and
Kasmina only counts steps. Every schedule is monotone non-decreasing, starts at 0 and
reaches exactly 1 at the end of the ramp: a seed never un-blends on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb


@dataclass(frozen=True, slots=True)
class WarmupHold:
    """Shape of the warm-up-hold schedule, as fractions of the ramp.

    Ramp linearly to ``hold_alpha`` over the first ``warmup_fraction``, hold there for
    ``hold_fraction`` (the host adapts to a partial graft before it is complete), then
    ramp linearly to 1.
    """

    hold_alpha: float = 0.5
    warmup_fraction: float = 0.3
    hold_fraction: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 < self.hold_alpha < 1.0:
            raise ValueError("hold_alpha must lie in (0, 1)")
        if self.warmup_fraction <= 0 or self.hold_fraction < 0:
            raise ValueError("warmup_fraction must be positive and hold_fraction not negative")
        if self.warmup_fraction + self.hold_fraction >= 1.0:
            raise ValueError("warmup_fraction + hold_fraction must be below 1")


SUPPORTED_METHODS = frozenset(
    {pb.BLEND_METHOD_LINEAR, pb.BLEND_METHOD_COSINE, pb.BLEND_METHOD_WARMUP_HOLD}
)


def alpha_at(
    method: pb.BlendMethod.ValueType,
    progress_steps: int,
    ramp_steps: int,
    shape: WarmupHold = WarmupHold(),
) -> float:
    """Alpha after ``progress_steps`` of a ``ramp_steps``-long ramp of ``method``."""
    if ramp_steps <= 0:
        raise ValueError("ramp_steps must be positive")
    t = min(max(progress_steps / ramp_steps, 0.0), 1.0)
    if method == pb.BLEND_METHOD_LINEAR:
        return t
    if method == pb.BLEND_METHOD_COSINE:
        return 1.0 if t >= 1.0 else 0.5 * (1.0 - math.cos(math.pi * t))
    if method == pb.BLEND_METHOD_WARMUP_HOLD:
        warm, hold = shape.warmup_fraction, shape.hold_fraction
        if t <= warm:
            return shape.hold_alpha * t / warm
        if t <= warm + hold:
            return shape.hold_alpha
        return shape.hold_alpha + (1.0 - shape.hold_alpha) * (t - warm - hold) / (1.0 - warm - hold)
    raise ValueError(f"unsupported blend method {pb.BlendMethod.Name(method)}")
