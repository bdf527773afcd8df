"""Nissa's metric store and state: Prometheus conventions, caps, health (pure)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from consumers.hub.window import Window
from consumers.nissa.health import ComponentStatus, HealthSettings, LagSample
from consumers.nissa.rules import AlertRule, Op, Stat
from consumers.nissa.state import NissaCollector, NissaState, StateSettings
from consumers.nissa.store import ExportSettings, prometheus_name
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import Labels, MetricSpec, NormalisedPoint, metric_spec

ALPHA = metric_spec("kasmina", "seed_alpha", "", pb.METRIC_KIND_GAUGE)
LATENCY = metric_spec("kasmina", "apply_latency", "ms")
DECISIONS = metric_spec("tamiyo", "decisions_total", "")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def aggregate(*points: tuple[MetricSpec, Labels, float]) -> pb.TelemetryAggregate:
    window = Window(start_ns=0, bounds=(0.001, 0.01))
    for spec, labels, value in points:
        normalised = NormalisedPoint(spec, labels, 0, (spec.name, labels))
        window.add_point(normalised, value * spec.scale, 1, "kasmina")
    window.saw_source("kasmina", 1)
    [out] = window.to_aggregates(hub="h", end_ns=2)
    return out


def scrape(state: NissaState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NissaCollector(state))
    return generate_latest(registry).decode()


def test_prometheus_names_carry_base_units() -> None:
    assert prometheus_name("kasmina.apply_latency", "seconds") == "kasmina_apply_latency_seconds"
    assert prometheus_name("tolaria.memory_bytes", "bytes") == "tolaria_memory_bytes"
    assert prometheus_name("tolaria.gpu-util", "ratio") == "tolaria_gpu_util_ratio"
    assert prometheus_name("1x.y", "") == "_1x_y"


def test_series_per_seed_counters_and_histograms_follow_the_conventions() -> None:
    state = NissaState(StateSettings(), FakeClock())
    for _ in range(2):
        state.ingest(aggregate(
            (ALPHA, (("run", "r"), ("seed", "s1")), 0.25),
            (ALPHA, (("run", "r"), ("seed", "s2")), 0.75),
            (LATENCY, (("run", "r"),), 5.0),
            (DECISIONS, (("run", "r"),), 1.0),
        ))  # fmt: skip
    text = scrape(state)
    assert 'kasmina_seed_alpha{run="r",seed="s1"} 0.25' in text
    assert 'kasmina_seed_alpha{run="r",seed="s2"} 0.75' in text
    assert "# TYPE kasmina_apply_latency_seconds histogram" in text
    assert 'kasmina_apply_latency_seconds_bucket{le="0.001",run="r"} 0.0' in text
    assert 'kasmina_apply_latency_seconds_bucket{le="0.01",run="r"} 2.0' in text
    assert 'kasmina_apply_latency_seconds_bucket{le="+Inf",run="r"} 2.0' in text
    assert 'kasmina_apply_latency_seconds_sum{run="r"} 0.01' in text
    assert 'tamiyo_decisions_total{run="r"} 2.0' in text
    assert "nissa_aggregates_total 2.0" in text


def test_label_sets_over_the_cap_are_dropped_and_counted() -> None:
    settings = StateSettings(export=ExportSettings(max_series_per_metric=3))
    state = NissaState(settings, FakeClock())
    state.ingest(aggregate(*[(ALPHA, (("seed", f"s{i}"),), 0.1) for i in range(5)]))
    text = scrape(state)
    assert text.count("kasmina_seed_alpha{") == 3
    assert 'nissa_series_dropped_total{metric="kasmina_seed_alpha"} 2.0' in text


def test_idle_series_expire_and_make_room() -> None:
    clock = FakeClock()
    settings = StateSettings(
        export=ExportSettings(max_series_per_metric=1, series_idle_expiry_s=60)
    )
    state = NissaState(settings, clock)
    state.ingest(aggregate((ALPHA, (("seed", "old"),), 0.1)))
    clock.now += 61
    state.tick()
    state.ingest(aggregate((ALPHA, (("seed", "new"),), 0.2)))
    text = scrape(state)
    assert 'seed="new"' in text and 'seed="old"' not in text


def test_health_reflects_lag_hub_silence_sources_and_components() -> None:
    clock = FakeClock()
    health = HealthSettings(max_group_lag_entries=10, hub_silence_s=5.0, lag_sample_max_age_s=5,
                            expected_sources=("kasmina",), source_silence_s=30.0)  # fmt: skip
    state = NissaState(StateSettings(health=health), clock)
    verdict, _ = state.health([])
    assert verdict.healthy  # just started: nothing is overdue yet
    clock.now += 11
    verdict, _ = state.health([])
    assert not verdict.healthy and any("never sampled" in p for p in verdict.problems)
    state.set_lag(LagSample(clock.now, {"telemetry": {"telemetry-hub": 3}}))
    state.ingest(aggregate((ALPHA, (), 0.1)))
    verdict, detail = state.health([ComponentStatus("weatherlight", True)])
    assert verdict.healthy and detail["status"] == "ok"
    state.set_lag(LagSample(clock.now, {"telemetry": {"telemetry-hub": 11}}))
    verdict, _ = state.health([ComponentStatus("weatherlight", False)])
    assert set(verdict.problems) == {
        "group telemetry-hub is 11 entries behind on telemetry",
        "weatherlight unhealthy",
    }
    state.set_lag(LagSample(clock.now, {}))
    clock.now += 6
    verdict, _ = state.health([])
    assert verdict.problems[0] == "bus lag sample is 6 s old"
    assert "telemetry hub silent for 6 s" in verdict.problems
    state.set_lag(LagSample(clock.now, error="connection refused"))
    clock.now += 30
    verdict, _ = state.health([])
    assert "bus unreachable: connection refused" in verdict.problems
    assert "source kasmina silent for 36 s" in verdict.problems


def test_a_windowed_rule_fires_through_nissa_and_unrelated_aggregates_do_not_clear_it() -> None:
    clock = FakeClock()
    rule = AlertRule("apply_slow", "kasmina.apply_latency", Op.GT, 0.002, for_s=10.0,
                     stat=Stat.MAX)  # fmt: skip
    state = NissaState(StateSettings(rules=(rule,)), clock)
    run = (("run", "r"),)
    state.ingest(aggregate((LATENCY, run, 5.0)))  # 5 ms: over the threshold
    for second in range(1, 11):  # ten windows of unrelated telemetry, one a second
        clock.now += 1.0
        state.ingest(aggregate((ALPHA, (("run", "r"), ("seed", "s1")), 0.5)))
        state.ingest(aggregate((LATENCY, (("run", "other"),), 0.1)))
        state.tick()
        assert bool(state.alerts_view()["active"]) == (second == 10)
    alerts = state.alerts_view()
    assert [(a["name"], a["labels"]) for a in alerts["active"]] == [("apply_slow", {"run": "r"})]
