"""The report's pieces: command names, the 'policy decided' rule, well-formed SVG."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from leyline_pb import leyline_pb2 as pb
from weatherlight.demo import svg
from weatherlight.demo.recorder import describe, policy_decided


def _command(kind: int, reason: str, **annotations: str) -> pb.AdaptationCommand:
    command = pb.AdaptationCommand(command_type=kind, reason=reason)  # type: ignore[arg-type]
    command.annotations.update(annotations)
    return command


@pytest.mark.parametrize(
    ("command", "decided"),
    [
        (_command(pb.COMMAND_TYPE_SEED, "policy"), True),
        (_command(pb.COMMAND_TYPE_NO_OP, "policy"), True),  # the policy chose NO_OP
        (_command(pb.COMMAND_TYPE_NO_OP, "timeout_urza"), True),  # decided, less metadata
        (_command(pb.COMMAND_TYPE_NO_OP, "timeout_inference"), False),
        (_command(pb.COMMAND_TYPE_NO_OP, "inference_busy"), False),
        (_command(pb.COMMAND_TYPE_NO_OP, "breaker.inference"), False),
        # the risk gate replaced a policy decision: still the policy's
        (_command(pb.COMMAND_TYPE_NO_OP, "conservative_mode", risk_replaced_reason="policy"), True),
        # the risk gate turned a breaker NO_OP into an emergency: not the policy's
        (
            _command(
                pb.COMMAND_TYPE_EMERGENCY, "loss_delta", risk_replaced_reason="breaker.inference"
            ),
            False,
        ),
    ],
)
def test_policy_decided(command: pb.AdaptationCommand, decided: bool) -> None:
    assert policy_decided(command) is decided


def test_describe_names_come_from_the_enums() -> None:
    seed = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_SEED)
    seed.seed.operation = pb.SEED_OP_START_BLENDING
    breaker = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_CIRCUIT_BREAKER)
    breaker.circuit_breaker.action = pb.BREAKER_ACTION_ENTER_CONSERVATIVE
    assert describe(seed) == "SEED/START_BLENDING"
    assert describe(breaker) == "CIRCUIT_BREAKER/ENTER_CONSERVATIVE"
    assert describe(pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_NO_OP)) == "NO_OP"


def test_charts_are_well_formed_svg_even_with_gaps_and_no_data() -> None:
    charts = [
        svg.line_chart(
            [svg.Series("a<b", [0, 1, 2], [1.0, math.nan, 3.0])],
            title="t & u", x_label="x", y_label="y",
            markers=[svg.Marker(1.0, "#000", "m")],
        ),
        svg.line_chart([svg.Series("empty", [], [])], title="none", x_label="x", y_label="y"),
        svg.histogram(
            [0.1, 0.2, 5.0], title="h", x_label="ms", markers=[svg.Marker(5, "#f00", "d")]
        ),
        svg.histogram([], title="h", x_label="ms"),
        svg.timeline(
            [svg.Lane("s0", [svg.Segment(0, 5, "#00f", "train")]), svg.Lane("s1", [])],
            title="lanes", x_label="step", x_max=10, legend=[("train", "#00f")],
        ),
    ]  # fmt: skip
    for chart in charts:
        root = ET.fromstring(chart)
        assert root.tag.endswith("svg")
    assert "a&lt;b" in charts[0]
    assert charts[0].count("<polyline") == 1
