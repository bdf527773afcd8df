"""Normalisation of the three sources into one schema (pure)."""

from __future__ import annotations

import pytest

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import (
    UNIT_BYTES,
    UNIT_RATIO,
    UNIT_SECONDS,
    Normaliser,
    SchemaSettings,
    core_labels,
    metric_spec,
    normalise_labels,
)
from leyline_vocab.telemetry import add_event, effective_priority

HIST = pb.METRIC_KIND_HISTOGRAM
S = UNIT_SECONDS
GAUGE = pb.METRIC_KIND_GAUGE
COUNTER = pb.METRIC_KIND_COUNTER


@pytest.mark.parametrize(
    ("source", "name", "unit", "expected"),
    [
        ("kasmina", "apply_latency", "ms", ("kasmina.apply_latency", S, 1e-3, HIST)),
        ("tolaria", "hook_latency_ms", "", ("tolaria.hook_latency", S, 1e-3, HIST)),
        ("tamiyo", "decision_latency", "us", ("tamiyo.decision_latency", S, 1e-6, HIST)),
        ("tolaria", "device_memory", "MB", ("tolaria.device_memory", UNIT_BYTES, 1e6, GAUGE)),
        ("tolaria", "host_memory_mib", "", ("tolaria.host_memory", UNIT_BYTES, 1024.0**2, GAUGE)),
        ("tolaria", "gpu_util", "%", ("tolaria.gpu_util", UNIT_RATIO, 0.01, GAUGE)),
        ("tamiyo", "decisions_total", "", ("tamiyo.decisions", "", 1.0, COUNTER)),
        ("tolaria", "samples_per_s", "", ("tolaria.samples_per_s", "", 1.0, GAUGE)),
        ("tamiyo", "tamiyo.Step Latency", "s", ("tamiyo.step_latency", S, 1.0, HIST)),
        ("kasmina", "seed_alpha", "1", ("kasmina.seed_alpha", "", 1.0, GAUGE)),
        ("tolaria", "throughput", "samples/s", ("tolaria.throughput", "samples_s", 1.0, GAUGE)),
    ],
)
def test_names_units_and_kinds_are_normalised(
    source: str, name: str, unit: str, expected: tuple[str, str, float, int]
) -> None:
    spec = metric_spec(source, name, unit)
    assert (spec.name, spec.unit, spec.kind) == (expected[0], expected[1], expected[3])
    assert spec.scale == pytest.approx(expected[2])


def test_an_explicit_kind_wins_over_inference() -> None:
    spec = metric_spec("tolaria", "uptime", "s", GAUGE)
    assert (spec.kind, spec.unit) == (GAUGE, UNIT_SECONDS)
    assert metric_spec("tamiyo", "rejections", "", COUNTER).name == "tamiyo.rejections"


def test_label_aliases_map_onto_run_seed_and_layer_so_seeds_stay_separate() -> None:
    settings = SchemaSettings()
    a, _ = normalise_labels({"training_run_id": "r1", "seed_id": "s1", "layer_id": "L3"}, settings)
    b, _ = normalise_labels({"run": "r1", "seed": "s2", "layer_depth": "L3"}, settings)
    assert a == (("layer", "L3"), ("run", "r1"), ("seed", "s1"))
    assert b == (("layer", "L3"), ("run", "r1"), ("seed", "s2"))
    assert a != b


def test_per_step_identifiers_and_excess_labels_are_dropped_and_counted() -> None:
    settings = SchemaSettings(max_extra_labels=2)
    labels, dropped = normalise_labels(
        {"run": "r", "step": "17", "b": "1", "a": "2", "c": "3", "le": "x", "empty": ""}, settings
    )
    assert labels == (("a", "2"), ("b", "1"), ("run", "r"))
    assert dropped == 3  # step, then c and label_le over the cap of two extra labels


def test_event_labels_keep_only_the_subject() -> None:
    labels = core_labels({"run": "r", "seed_id": "s", "reason": "loss", "score": "0.9"},
                         SchemaSettings())  # fmt: skip
    assert labels == (("run", "r"), ("seed", "s"))


def test_normaliser_memoises_and_agrees_with_the_pure_functions() -> None:
    normaliser = Normaliser(cache_entries=3)
    expected = metric_spec("kasmina", "apply_ms", "")
    seen: dict[object, object] = {}
    for i in range(5):
        raw = pb.MetricPoint(name="apply_ms", value=2.0 + i, labels={"seed_id": f"s{i % 3}"})
        raw.labels["step"] = str(i)  # another insertion order, another step: same series
        found, value, dropped = normaliser.take_point("kasmina", raw)
        assert value == pytest.approx((2.0 + i) / 1000)
        assert found.spec == expected and dropped == 1
        assert found.labels == (("seed", f"s{i % 3}"),)
        assert found.key == ("kasmina.apply", found.labels)
        assert normaliser.source(" Kasmina ") == "kasmina"
        seen.setdefault(found.labels, found)
        assert seen[found.labels] is found  # a cache hit whatever the step


def test_a_critical_event_makes_the_packet_critical_whatever_its_own_priority() -> None:
    packet = pb.TelemetryPacket(priority=pb.MESSAGE_PRIORITY_NORMAL)
    assert effective_priority(packet) == pb.MESSAGE_PRIORITY_NORMAL
    add_event(packet, "loss_spike", priority=pb.MESSAGE_PRIORITY_HIGH)
    assert effective_priority(packet) == pb.MESSAGE_PRIORITY_HIGH
    # A producer outside the vocabulary may set only the level: CRITICAL still counts.
    packet.events.add(name="isolation_violation", level=pb.TELEMETRY_LEVEL_CRITICAL)
    assert effective_priority(packet) == pb.MESSAGE_PRIORITY_CRITICAL
    assert effective_priority(pb.TelemetryPacket()) == pb.MESSAGE_PRIORITY_NORMAL
    low = pb.TelemetryPacket(priority=pb.MESSAGE_PRIORITY_LOW)
    assert effective_priority(low) == pb.MESSAGE_PRIORITY_LOW
