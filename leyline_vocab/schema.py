"""One schema for the telemetry of every source (pure functions, no IO).

Tamiyo, Tolaria and Kasmina name and scale their metrics their own way ("hook_latency_ms",
unit "MB", label "seed_id"). The hub maps each point onto one schema before anything
aggregates it, so that the same quantity from two sources lands in comparable series:

- name: ``<source>.<name>``, lower case, ``[a-z0-9_]`` segments; a unit suffix in the
  name (``_ms``, ``_mb``...) is removed and read as the unit when none is given; the
  ``_total`` of a counter is removed (Nissa adds it back on export);
- unit: a base unit: ``seconds``, ``bytes``, ``ratio`` or dimensionless ``""``; other
  units are kept as given (sanitised) and the value is not scaled;
- kind: the point's own `MetricKind`, else a histogram for a time unit (latencies),
  a counter for a ``_total`` name, a gauge otherwise;
- labels: ``run``, ``seed`` and ``layer`` from their usual aliases, plus at most
  `max_extra_labels` other keys, so one series per seed (and per layer) stays separate
  and cardinality stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.telemetry import LABEL_LAYER, LABEL_RUN, LABEL_SEED

UNIT_SECONDS = "seconds"
UNIT_BYTES = "bytes"
UNIT_RATIO = "ratio"
UNIT_NONE = ""

# unit spelling (lower case) -> (base unit, factor to the base unit)
UNITS: Mapping[str, tuple[str, float]] = {
    **dict.fromkeys(("ns", "nanosecond", "nanoseconds"), (UNIT_SECONDS, 1e-9)),
    **dict.fromkeys(("us", "µs", "μs", "microsecond", "microseconds"), (UNIT_SECONDS, 1e-6)),
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), (UNIT_SECONDS, 1e-3)),
    **dict.fromkeys(("s", "sec", "second", "seconds"), (UNIT_SECONDS, 1.0)),
    **dict.fromkeys(("min", "minute", "minutes"), (UNIT_SECONDS, 60.0)),
    **dict.fromkeys(("h", "hour", "hours"), (UNIT_SECONDS, 3600.0)),
    **dict.fromkeys(("b", "byte", "bytes"), (UNIT_BYTES, 1.0)),
    "kb": (UNIT_BYTES, 1e3),
    "mb": (UNIT_BYTES, 1e6),
    "gb": (UNIT_BYTES, 1e9),
    "tb": (UNIT_BYTES, 1e12),
    "kib": (UNIT_BYTES, 1024.0),
    "mib": (UNIT_BYTES, 1024.0**2),
    "gib": (UNIT_BYTES, 1024.0**3),
    "tib": (UNIT_BYTES, 1024.0**4),
    **dict.fromkeys(("%", "percent", "pct"), (UNIT_RATIO, 0.01)),
    **dict.fromkeys(("ratio", "fraction"), (UNIT_RATIO, 1.0)),
    **dict.fromkeys(("", "1", "count", "counts"), (UNIT_NONE, 1.0)),
}

# Name suffixes read as a unit. A bare "_s" is not one: "samples_per_s" is a rate.
NAME_UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_seconds", "s"), ("_sec", "s"), ("_ms", "ms"), ("_us", "us"), ("_ns", "ns"),
    ("_bytes", "b"), ("_kb", "kb"), ("_mb", "mb"), ("_gb", "gb"),
    ("_kib", "kib"), ("_mib", "mib"), ("_gib", "gib"),
    ("_percent", "%"), ("_pct", "%"), ("_ratio", "ratio"),
)  # fmt: skip

LABEL_ALIASES: Mapping[str, str] = {
    "run": LABEL_RUN,
    "run_id": LABEL_RUN,
    "training_run_id": LABEL_RUN,
    "seed": LABEL_SEED,
    "seed_id": LABEL_SEED,
    "layer": LABEL_LAYER,
    "layer_id": LABEL_LAYER,
    "layer_depth": LABEL_LAYER,
}
CORE_LABELS = frozenset(LABEL_ALIASES.values())
RESERVED_LABELS = frozenset({"le", "quantile", "job", "instance"})

COUNTER_SUFFIX = "_total"
_INVALID = re.compile(r"[^a-z0-9_]+")
_REPEATS = re.compile(r"_{2,}")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SchemaSettings:
    """Bounds of the schema; each extra label multiplies a metric's series."""

    max_extra_labels: int = 4
    max_label_value_chars: int = 128
    # per-step or per-message identifiers: a new series each time; they belong in events
    dropped_labels: frozenset[str] = frozenset(
        {"step", "global_step", "epoch", "packet_id", "command_id", "timestamp", "timestamp_ns"}
    )


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A point's normalised identity: name, base unit, kind, and the factor that scales
    its value to the base unit."""

    name: str
    unit: str
    kind: pb.MetricKind.ValueType
    scale: float


def sanitise(text: str) -> str:
    """Lower case, runs of anything but ``[a-z0-9_]`` turned into one underscore."""
    cleaned = _REPEATS.sub("_", _INVALID.sub("_", text.strip().lower())).strip("_")
    return cleaned or "unnamed"


def normalise_source(source: str) -> str:
    return sanitise(source)


def _split_name(source: str, name: str) -> list[str]:
    parts = [sanitise(part) for part in name.split(".") if part.strip()]
    if parts and parts[0] == source:
        parts = parts[1:]
    return parts or ["unnamed"]


def metric_spec(
    source: str, name: str, unit: str, kind: pb.MetricKind.ValueType = pb.METRIC_KIND_UNKNOWN
) -> MetricSpec:
    """Normalise one metric's name, unit and kind; `source` is already normalised."""
    parts = _split_name(source, name)
    leaf = parts[-1]
    unit_key = unit.strip().lower()
    for suffix, suffix_unit in NAME_UNIT_SUFFIXES:
        if leaf.endswith(suffix) and len(leaf) > len(suffix):
            leaf = leaf[: -len(suffix)]
            if not unit_key:
                unit_key = suffix_unit
            break
    base_unit, scale = UNITS.get(unit_key, (sanitise(unit_key), 1.0))
    if kind == pb.METRIC_KIND_UNKNOWN:
        if leaf.endswith(COUNTER_SUFFIX):
            kind = pb.METRIC_KIND_COUNTER
        elif base_unit == UNIT_SECONDS:
            kind = pb.METRIC_KIND_HISTOGRAM
        else:
            kind = pb.METRIC_KIND_GAUGE
    if kind == pb.METRIC_KIND_COUNTER and leaf.endswith(COUNTER_SUFFIX) and leaf != COUNTER_SUFFIX:
        leaf = leaf.removesuffix(COUNTER_SUFFIX)
    parts[-1] = leaf
    return MetricSpec(".".join((source, *parts)), base_unit, kind, scale)


def event_name(source: str, name: str) -> str:
    """An event's normalised name, ``<source>.<name>``."""
    return ".".join((source, *_split_name(source, name)))


def normalise_labels(raw: Mapping[str, str], settings: SchemaSettings) -> tuple[Labels, int]:
    """Canonical labels, sorted, and how many extra keys were dropped over the bound.

    Aliases map onto ``run``, ``seed``, ``layer``; empty values are left out (a label
    that is absent and one that is empty are the same series in Prometheus); keys in
    `dropped_labels` are dropped and counted.
    """
    core: dict[str, str] = {}
    extra: dict[str, str] = {}
    dropped = 0
    limit = settings.max_label_value_chars
    for key, value in raw.items():
        if not value:
            continue
        canonical = LABEL_ALIASES.get(key)
        if canonical is not None:
            core[canonical] = value[:limit]
            continue
        clean = sanitise(key)
        if clean in settings.dropped_labels:
            dropped += 1
            continue
        if clean in RESERVED_LABELS or clean in CORE_LABELS or clean[0].isdigit():
            clean = "label_" + clean
        extra[clean] = value[:limit]
    if len(extra) > settings.max_extra_labels:
        kept = sorted(extra)[: settings.max_extra_labels]
        dropped += len(extra) - len(kept)
        extra = {k: extra[k] for k in kept}
    core.update(extra)
    return tuple(sorted(core.items())), dropped


def core_labels(raw: Mapping[str, str], settings: SchemaSettings) -> Labels:
    """Only ``run``, ``seed`` and ``layer`` (from their aliases): what identifies the
    subject of an event, without the event's free-form attributes."""
    found = {
        LABEL_ALIASES[key]: value[: settings.max_label_value_chars]
        for key, value in raw.items()
        if value and key in LABEL_ALIASES
    }
    return tuple(sorted(found.items()))


@dataclass(frozen=True, slots=True)
class NormalisedPoint:
    """What the window needs of a point, apart from its value: its identity (`key`,
    the series: name and labels), spec, and how many label keys normalisation dropped."""

    spec: MetricSpec
    labels: Labels
    dropped: int
    key: tuple[str, Labels]


class Normaliser:
    """The normalisation functions with memoisation: the same few hundred metric
    identities (source, name, unit, kind, labels) recur in every packet, and the hub's
    throughput depends on not recomputing them. Caches are cleared when they outgrow
    their bound."""

    def __init__(self, settings: SchemaSettings | None = None, cache_entries: int = 50_000):
        self.settings = settings or SchemaSettings()
        self.cache_entries = cache_entries
        self._points: dict[tuple[str, bytes], NormalisedPoint] = {}
        self._dropped = tuple(sorted(self.settings.dropped_labels))
        self._sources: dict[str, str] = {}
        self._events: dict[tuple[str, str], str] = {}

    def source(self, raw: str) -> str:
        found = self._sources.get(raw)
        if found is None:
            if len(self._sources) >= self.cache_entries:
                self._sources.clear()
            found = self._sources[raw] = normalise_source(raw)
        return found

    def take_point(self, source: str, point: pb.MetricPoint) -> tuple[NormalisedPoint, float, int]:
        """The normalised point, its value in the base unit and how many label keys were
        dropped; `source` is already normalised. Consumes the point: per-step labels and
        the value are removed so that the rest of it, serialised (maps in sorted order),
        is the cache key, several times cheaper than walking the label map in Python."""
        raw_value = point.value
        point.ClearField("value")
        raw_labels = point.labels
        removed = 0
        for name in self._dropped:
            if name in raw_labels:
                del raw_labels[name]
                removed += 1
        key = (source, point.SerializeToString(deterministic=True))
        found = self._points.get(key)
        if found is None:
            if len(self._points) >= self.cache_entries:
                self._points.clear()
            spec = metric_spec(source, point.name, point.unit, point.kind)
            labels, dropped = normalise_labels(point.labels, self.settings)
            found = self._points[key] = NormalisedPoint(spec, labels, dropped, (spec.name, labels))
        return found, raw_value * found.spec.scale, removed + found.dropped

    def event_name(self, source: str, name: str) -> str:
        key = (source, name)
        found = self._events.get(key)
        if found is None:
            if len(self._events) >= self.cache_entries:
                self._events.clear()
            found = self._events[key] = event_name(source, name)
        return found

    def event_labels(self, raw: Mapping[str, str]) -> Labels:
        return core_labels(raw, self.settings)
