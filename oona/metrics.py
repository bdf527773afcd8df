"""In-process counters and latency histograms for the bus, exposed as a snapshot.

Kept free of any exporter so the bus has no opinion on how metrics leave the process;
the telemetry hub maps the snapshot onto Prometheus.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from dataclasses import dataclass, field

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)  # fmt: skip

Labels = tuple[tuple[str, str], ...]


@dataclass
class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics) with exact count and sum."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += 1
        self.sum += value

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (inf past the last bound)."""
        if self.total == 0:
            return 0.0
        rank = q * self.total
        seen = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class BusMetrics:
    """Counters (published, delivered, acked, retried, dead_lettered, rejected, shed,
    duplicates, claimed, io_failures) and latency histograms, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[name][_labels(labels)] += amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            hist = self._histograms[name].get(key)
            if hist is None:
                hist = self._histograms[name][key] = Histogram()
            hist.observe(value)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._gauges[name][_labels(labels)] = value

    def count(self, name: str, **labels: str) -> float:
        """One counter's value; with no labels, the sum over all its label sets."""
        with self._lock:
            series = self._counters.get(name, {})
            if labels:
                return series.get(_labels(labels), 0.0)
            return sum(series.values())

    def histogram(self, name: str, **labels: str) -> Histogram | None:
        with self._lock:
            return self._histograms.get(name, {}).get(_labels(labels))

    def snapshot(self) -> dict[str, object]:
        """Plain data: counters and gauges by label set, histograms as bucket lists."""
        with self._lock:
            return {
                "counters": {
                    name: [{"labels": dict(k), "value": v} for k, v in series.items()]
                    for name, series in self._counters.items()
                },
                "gauges": {
                    name: [{"labels": dict(k), "value": v} for k, v in series.items()]
                    for name, series in self._gauges.items()
                },
                "histograms": {
                    name: [
                        {
                            "labels": dict(k),
                            "bounds": list(h.bounds),
                            "counts": list(h.counts),
                            "count": h.total,
                            "sum": h.sum,
                        }
                        for k, h in series.items()
                    ]
                    for name, series in self._histograms.items()
                },
            }
