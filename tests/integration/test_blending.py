"""Alpha schedules: endpoints, monotonicity and shape, table-driven."""

from __future__ import annotations

import itertools
import math

import pytest

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.blending import SUPPORTED_METHODS, WarmupHold, alpha_at

METHODS = sorted(SUPPORTED_METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ramp", [1, 7, 64, 1000])
def test_every_schedule_runs_from_zero_to_one_monotonically(method: int, ramp: int) -> None:
    values = [alpha_at(method, k, ramp) for k in range(ramp + 3)]  # type: ignore[arg-type]
    assert values[0] == 0.0
    assert values[ramp] == 1.0
    assert values[-1] == 1.0  # past the end of the ramp it holds at 1
    assert all(b >= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("method", "progress", "expected"),
    [
        (pb.BLEND_METHOD_LINEAR, 25, 0.25),
        (pb.BLEND_METHOD_LINEAR, 50, 0.5),
        (pb.BLEND_METHOD_COSINE, 25, 0.5 * (1 - math.cos(math.pi / 4))),
        (pb.BLEND_METHOD_COSINE, 50, 0.5),
        (pb.BLEND_METHOD_WARMUP_HOLD, 15, 0.25),  # halfway through the warm-up
        (pb.BLEND_METHOD_WARMUP_HOLD, 30, 0.5),  # warm-up done: hold value
        (pb.BLEND_METHOD_WARMUP_HOLD, 60, 0.5),  # still holding
        (pb.BLEND_METHOD_WARMUP_HOLD, 70, 0.5),  # end of the hold
        (pb.BLEND_METHOD_WARMUP_HOLD, 85, 0.75),  # halfway up the last ramp
    ],
)
def test_schedule_shapes(method: int, progress: int, expected: float) -> None:
    assert alpha_at(method, progress, 100) == pytest.approx(expected)  # type: ignore[arg-type]


def test_custom_warmup_hold_shape() -> None:
    shape = WarmupHold(hold_alpha=0.2, warmup_fraction=0.5, hold_fraction=0.25)
    assert alpha_at(pb.BLEND_METHOD_WARMUP_HOLD, 50, 100, shape) == pytest.approx(0.2)
    assert alpha_at(pb.BLEND_METHOD_WARMUP_HOLD, 75, 100, shape) == pytest.approx(0.2)
    assert alpha_at(pb.BLEND_METHOD_WARMUP_HOLD, 100, 100, shape) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hold_alpha": 0.0},
        {"hold_alpha": 1.0},
        {"warmup_fraction": 0.0},
        {"warmup_fraction": 0.6, "hold_fraction": 0.4},
    ],
)
def test_invalid_warmup_hold_shapes_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WarmupHold(**kwargs)


def test_unknown_method_and_empty_ramp_are_errors() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        alpha_at(pb.BLEND_METHOD_UNKNOWN, 1, 10)
    with pytest.raises(ValueError, match="ramp_steps"):
        alpha_at(pb.BLEND_METHOD_LINEAR, 1, 0)
