"""Nissa's metric store: aggregated series merged over time and exported to Prometheus.

Names follow prometheus-client conventions: ``<source>_<name>`` plus the base unit
(``_seconds``, ``_bytes``, ``_ratio``); counters are exported with ``_total``;
histograms (latencies) as cumulative ``_bucket{le=...}``, ``_count`` and ``_sum``.
Each label set is its own series, so per-seed series stay separate.

Cardinality is bounded: at most `max_series_per_metric` label sets per metric and
`max_metrics` metrics. A series over the bound is not stored and is counted in
``nissa_series_dropped_total{metric}`` (or ``nissa_metrics_dropped_total``); series not
updated for `series_idle_expiry_s` are forgotten, which makes room for new ones (a
culled seed stops reporting and its series goes away).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import UNIT_BYTES, UNIT_RATIO, UNIT_SECONDS, Labels

UNIT_SUFFIXES = {UNIT_SECONDS: "_seconds", UNIT_BYTES: "_bytes", UNIT_RATIO: "_ratio"}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
KIND_TYPES = {
    pb.METRIC_KIND_GAUGE: "gauge",
    pb.METRIC_KIND_COUNTER: "counter",
    pb.METRIC_KIND_HISTOGRAM: "histogram",
}


def prometheus_name(name: str, unit: str) -> str:
    """``kasmina.apply_latency`` in seconds -> ``kasmina_apply_latency_seconds``."""
    base = _INVALID.sub("_", name.replace(".", "_"))
    if base[:1].isdigit():
        base = "_" + base
    suffix = UNIT_SUFFIXES.get(unit, "")
    if suffix and not base.endswith(suffix):
        base += suffix
    return base


@dataclass(frozen=True)
class ExportSettings:
    max_series_per_metric: int = 1_000
    max_metrics: int = 2_000
    series_idle_expiry_s: float = 900.0


@dataclass
class _Series:
    updated_s: float
    value: float = 0.0  # gauge: last value; counter: running total
    count: int = 0
    sum: float = 0.0
    buckets: list[int] = field(default_factory=list)  # histogram, per bucket


@dataclass
class _Family:
    name: str
    kind: pb.MetricKind.ValueType
    unit: str
    source: str
    bounds: tuple[float, ...] = ()
    series: dict[Labels, _Series] = field(default_factory=dict)


class MetricStore:
    """Not thread-safe on its own: NissaState serialises access."""

    def __init__(self, settings: ExportSettings | None = None) -> None:
        self.settings = settings or ExportSettings()
        self._families: dict[str, _Family] = {}
        self.series_dropped: Counter[str] = Counter()
        self.metrics_dropped = 0
        self.rejected: Counter[str] = Counter()

    def ingest(self, series: pb.AggregatedSeries, labels: Labels, now_s: float) -> bool:
        """Merge one window's aggregate of a series; False when it was not stored."""
        if series.kind not in KIND_TYPES or series.count == 0:
            self.rejected["invalid"] += 1
            return False
        name = prometheus_name(series.name, series.unit)
        family = self._families.get(name)
        if family is None:
            if len(self._families) >= self.settings.max_metrics:
                self.metrics_dropped += 1
                return False
            family = self._families[name] = _Family(
                name, series.kind, series.unit, series.source, tuple(series.bucket_bounds)
            )
        if family.kind != series.kind:
            self.rejected["kind_conflict"] += 1
            return False
        if family.kind == pb.METRIC_KIND_HISTOGRAM and (
            tuple(series.bucket_bounds) != family.bounds
            or len(series.bucket_counts) != len(family.bounds) + 1
        ):
            self.rejected["bucket_mismatch"] += 1
            return False
        entry = family.series.get(labels)
        if entry is None:
            if len(family.series) >= self.settings.max_series_per_metric:
                self.series_dropped[name] += 1
                return False
            entry = family.series[labels] = _Series(now_s)
            if family.kind == pb.METRIC_KIND_HISTOGRAM:
                entry.buckets = [0] * (len(family.bounds) + 1)
        entry.updated_s = now_s
        if family.kind == pb.METRIC_KIND_GAUGE:
            entry.value = series.last
        elif family.kind == pb.METRIC_KIND_COUNTER:
            entry.value += series.sum
        else:
            entry.count += series.count
            entry.sum += series.sum
            for index, count in enumerate(series.bucket_counts):
                entry.buckets[index] += count
        return True

    def gauge_values(self, name: str, unit: str = "") -> dict[Labels, float]:
        """The last value of each series of a gauge (its normalised name and unit); empty
        when none is stored."""
        family = self._families.get(prometheus_name(name, unit))
        if family is None or family.kind != pb.METRIC_KIND_GAUGE:
            return {}
        return {labels: entry.value for labels, entry in family.series.items()}

    def expire(self, now_s: float) -> int:
        """Forget series idle for longer than the expiry; returns how many."""
        horizon = now_s - self.settings.series_idle_expiry_s
        removed = 0
        for name in list(self._families):
            family = self._families[name]
            stale = [labels for labels, s in family.series.items() if s.updated_s < horizon]
            for labels in stale:
                del family.series[labels]
            removed += len(stale)
            if not family.series:
                del self._families[name]
        return removed

    def families(self) -> Iterator[Metric]:
        """The stored metrics as prometheus-client families (samples built now)."""
        for family in self._families.values():
            documentation = f"{family.source} telemetry" + (
                f" ({family.unit})" if family.unit else ""
            )
            metric = Metric(family.name, documentation, KIND_TYPES[family.kind])
            for labels, entry in family.series.items():
                values = dict(labels)
                if family.kind == pb.METRIC_KIND_GAUGE:
                    metric.add_sample(family.name, values, entry.value)
                elif family.kind == pb.METRIC_KIND_COUNTER:
                    metric.add_sample(family.name + "_total", values, entry.value)
                else:
                    cumulative = 0
                    for bound, count in zip((*family.bounds, math.inf), entry.buckets, strict=True):
                        cumulative += count
                        le = "+Inf" if math.isinf(bound) else repr(float(bound))
                        metric.add_sample(family.name + "_bucket", {**values, "le": le}, cumulative)
                    metric.add_sample(family.name + "_count", values, entry.count)
                    metric.add_sample(family.name + "_sum", values, entry.sum)
            yield metric
