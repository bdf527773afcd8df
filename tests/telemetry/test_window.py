"""Window aggregation, packet-id de-duplication and the shedding policy (pure)."""

from __future__ import annotations

import math

import pytest

from consumers.hub.dedup import PacketIdCache
from consumers.hub.overload import OverloadPolicy
from consumers.hub.window import Window
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import Labels, MetricSpec, NormalisedPoint, metric_spec
from leyline_vocab.telemetry import HUB_SHED_EVENTS, HUB_SHED_SERIES

LATENCY = metric_spec("kasmina", "apply_latency", "s")
ALPHA = metric_spec("kasmina", "seed_alpha", "", pb.METRIC_KIND_GAUGE)
SEED_A = (("run", "r"), ("seed", "a"))
SEED_B = (("run", "r"), ("seed", "b"))


def point(spec: MetricSpec, labels: Labels) -> NormalisedPoint:
    return NormalisedPoint(spec, labels, 0, (spec.name, labels))


def test_a_window_keeps_count_sum_min_max_last_per_series() -> None:
    window = Window(start_ns=0)
    for t, value in enumerate([0.5, 0.2, 0.9, 0.4]):
        window.add_point(point(ALPHA, SEED_A), value, t, "kasmina")
    window.add_point(point(ALPHA, SEED_B), 0.7, 9, "kasmina")
    [aggregate] = window.to_aggregates(hub="h", end_ns=10)
    by_seed = {s.labels["seed"]: s for s in aggregate.series}
    a = by_seed["a"]
    assert (a.count, a.sum, a.min, a.max, a.last) == (4, pytest.approx(2.0), 0.2, 0.9, 0.4)
    assert by_seed["b"].last == 0.7 and by_seed["b"].count == 1
    assert not a.bucket_bounds


def test_the_last_value_is_the_latest_by_timestamp_not_by_arrival() -> None:
    window = Window(start_ns=0)
    window.add_point(point(ALPHA, SEED_A), 1.0, 20, "kasmina")
    window.add_point(point(ALPHA, SEED_A), 2.0, 10, "kasmina")  # late arrival of an older point
    [aggregate] = window.to_aggregates(hub="h", end_ns=30)
    assert aggregate.series[0].last == 1.0


def test_latencies_are_histograms_not_last_samples() -> None:
    bounds = (0.001, 0.01, 0.1)
    window = Window(start_ns=0, bounds=bounds)
    for value in (0.0005, 0.001, 0.005, 0.05, 3.0):
        window.add_point(point(LATENCY, SEED_A), value, 1, "kasmina")
    [aggregate] = window.to_aggregates(hub="h", end_ns=2)
    series = aggregate.series[0]
    assert list(series.bucket_bounds) == list(bounds)
    assert list(series.bucket_counts) == [2, 1, 1, 1]  # le semantics: 0.001 <= 0.001
    assert series.count == 5 and series.max == 3.0


def test_bounds_are_counted_never_silent() -> None:
    window = Window(start_ns=0, max_series=1, max_events=1)
    assert window.add_point(point(ALPHA, SEED_A), 1.0, 1, "k")
    assert not window.add_point(point(ALPHA, SEED_B), 1.0, 1, "k")
    assert not window.add_point(point(ALPHA, SEED_A), math.nan, 1, "k")
    assert window.add_event(pb.ForwardedEvent(packet_id="1"))
    assert not window.add_event(pb.ForwardedEvent(packet_id="2"))
    assert window.add_event(pb.ForwardedEvent(packet_id="3"), urgent=True)
    [aggregate] = window.to_aggregates(hub="h", end_ns=2)
    assert aggregate.hub_counters[HUB_SHED_SERIES] == 1
    assert aggregate.hub_counters[HUB_SHED_EVENTS] == 1
    assert [e.packet_id for e in aggregate.events] == ["1", "3"]


def test_a_large_window_is_split_and_sources_ride_on_the_first_part() -> None:
    window = Window(start_ns=5)
    for i in range(25):
        window.add_point(point(ALPHA, (("seed", f"s{i}"),)), 1.0, 1, "kasmina")
    window.saw_source("kasmina", 7, pb.HealthReport(status=pb.HEALTH_STATUS_HEALTHY))
    parts = window.to_aggregates(hub="h", end_ns=9, series_per_message=10)
    assert [len(p.series) for p in parts] == [10, 10, 5]
    assert [len(p.sources) for p in parts] == [1, 0, 0]
    assert parts[0].sources[0].health.status == pb.HEALTH_STATUS_HEALTHY
    assert len({p.aggregate_id for p in parts}) == 3
    assert all((p.window_start_ns, p.window_end_ns) == (5, 9) for p in parts)


def test_an_empty_window_still_makes_one_aggregate_as_a_heartbeat() -> None:
    [aggregate] = Window(start_ns=0).to_aggregates(hub="h", end_ns=1)
    assert aggregate.hub == "h" and not aggregate.series


def test_packet_ids_are_remembered_within_capacity_and_ttl() -> None:
    cache = PacketIdCache(capacity=3, ttl_s=10.0)
    for i, now in enumerate((0.0, 1.0, 2.0, 3.0)):
        cache.add(f"p{i}", now)
    assert "p0" not in cache
    assert all(p in cache for p in ("p1", "p2", "p3"))
    cache.expire(12.5)
    assert "p1" not in cache and "p2" not in cache and "p3" in cache


def test_only_late_normal_and_low_packets_are_shed() -> None:
    policy = OverloadPolicy(shed_after_ms=100.0)
    assert policy.sheds(pb.MESSAGE_PRIORITY_NORMAL, 101.0)
    assert policy.sheds(pb.MESSAGE_PRIORITY_LOW, 101.0)
    assert not policy.sheds(pb.MESSAGE_PRIORITY_NORMAL, 99.0)
    assert not policy.sheds(pb.MESSAGE_PRIORITY_HIGH, 1e9)
    assert not policy.sheds(pb.MESSAGE_PRIORITY_CRITICAL, 1e9)
