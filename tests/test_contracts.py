"""Leyline: the committed bindings match proto/, and the contracts say what they must."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


def test_committed_bindings_match_the_proto_sources(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools missing: install the project with its dev extra")
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "tools" / "genproto.py")
    assert spec is not None and spec.loader is not None
    genproto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(genproto)
    for generated in genproto.generate(tmp_path):
        committed = ROOT / "leyline_pb" / generated.name
        assert generated.read_bytes() == committed.read_bytes(), (
            f"{generated.name} drifted from proto/leyline.proto: run `make proto`"
        )


def test_command_types_include_an_explicit_no_op() -> None:
    assert pb.CommandType.Name(pb.COMMAND_TYPE_NO_OP) == "COMMAND_TYPE_NO_OP"
    assert pb.COMMAND_TYPE_NO_OP != 0  # the zero value stays "unknown", never a decision


def test_every_enum_reserves_zero_for_unknown() -> None:
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("UNKNOWN"), enum.name


def test_seed_lifecycle_has_every_stage_of_the_design() -> None:
    names = [pb.SeedLifecycleStage.Name(value) for value in pb.SeedLifecycleStage.values()]
    stages = {name.removeprefix("SEED_STAGE_") for name in names}
    assert {"DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY",
            "FOSSILIZED", "CULLED", "EMBARGOED", "RESETTING", "TERMINATED"} <= stages  # fmt: skip


def test_messages_round_trip() -> None:
    packet = pb.SystemStatePacket(packet_id="p", global_step=7, training_metrics={"loss": 1.5})
    packet.seed_states.add(seed_id="s1", stage=pb.SEED_STAGE_BLENDING, alpha=0.25)
    assert pb.SystemStatePacket.FromString(packet.SerializeToString()) == packet
