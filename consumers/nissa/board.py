"""The live status of each training run, as the status page shows it (pure).

Built from what the producers already send (see leyline_vocab.telemetry): Tamiyo's
decision events with their reasons, breaker and conservative-mode events and gauges,
the policy's expected risk; Kasmina's per-seed stage and alpha series and its
seed_transition events, grouped by layer. Bounded: the most recent `max_runs` runs,
`decisions_per_run` decisions and `seeds_per_run` seeds per run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.schema import Labels, event_name, metric_spec
from leyline_vocab.telemetry import (
    BREAKER_EVENTS,
    BREAKER_STATE_NAMES,
    CONSERVATIVE_EVENTS,
    EVENT_DECISION,
    EVENT_SEED_TRANSITION,
    LABEL_LAYER,
    LABEL_RUN,
    LABEL_SEED,
    METRIC_BREAKER_STATE,
    METRIC_CONSERVATIVE,
    METRIC_RISK,
    METRIC_SEED_ALPHA,
    METRIC_SEED_STAGE,
    SOURCE_KASMINA,
    SOURCE_TAMIYO,
)

DECISION = event_name(SOURCE_TAMIYO, EVENT_DECISION)
SEED_TRANSITION = event_name(SOURCE_KASMINA, EVENT_SEED_TRANSITION)
BREAKER_EVENT_NAMES = frozenset(event_name(SOURCE_TAMIYO, kind) for kind in BREAKER_EVENTS)
CONSERVATIVE_EVENT_NAMES = {
    event_name(SOURCE_TAMIYO, kind): active for kind, active in CONSERVATIVE_EVENTS.items()
}
RISK = metric_spec(SOURCE_TAMIYO, METRIC_RISK, "").name
BREAKER_STATE = metric_spec(SOURCE_TAMIYO, METRIC_BREAKER_STATE, "").name
CONSERVATIVE = metric_spec(SOURCE_TAMIYO, METRIC_CONSERVATIVE, "").name
SEED_STAGE = metric_spec(SOURCE_KASMINA, METRIC_SEED_STAGE, "").name
SEED_ALPHA = metric_spec(SOURCE_KASMINA, METRIC_SEED_ALPHA, "").name
NO_RUN = ""


@dataclass(frozen=True)
class BoardSettings:
    max_runs: int = 20
    decisions_per_run: int = 25
    seeds_per_run: int = 1_000


@dataclass
class _Run:
    run: str
    updated_s: float
    decisions: deque[dict[str, object]]
    seeds: dict[str, dict[str, object]] = field(default_factory=dict)
    breakers: dict[str, dict[str, object]] = field(default_factory=dict)
    conservative: dict[str, object] = field(default_factory=dict)
    risk: float | None = None


def _stage_name(value: float) -> str:
    number = int(value)
    if number in pb.SeedLifecycleStage.values():
        return pb.SeedLifecycleStage.Name(pb.SeedLifecycleStage.ValueType(number))
    return str(number)


class StatusBoard:
    """Not thread-safe on its own: NissaState serialises access."""

    def __init__(self, settings: BoardSettings | None = None) -> None:
        self.settings = settings or BoardSettings()
        self._runs: dict[str, _Run] = {}

    def _run(self, name: str, now_s: float) -> _Run:
        run = self._runs.get(name)
        if run is None:
            if len(self._runs) >= self.settings.max_runs:
                oldest = min(self._runs.values(), key=lambda r: r.updated_s)
                del self._runs[oldest.run]
            run = self._runs[name] = _Run(
                name, now_s, deque(maxlen=self.settings.decisions_per_run)
            )
        run.updated_s = now_s
        return run

    def _seed(self, run: _Run, seed: str, layer: str) -> dict[str, object] | None:
        found = run.seeds.get(seed)
        if found is None:
            if len(run.seeds) >= self.settings.seeds_per_run:
                return None
            found = run.seeds[seed] = {"seed": seed, "layer": layer, "stage": "", "alpha": None}
        if layer:
            found["layer"] = layer
        return found

    def event(self, forwarded: pb.ForwardedEvent, now_s: float) -> None:
        name = forwarded.event.name
        attrs = forwarded.event.attributes
        at_s = forwarded.timestamp_ns / 1e9
        if name == DECISION:
            run = self._run(forwarded.labels.get(LABEL_RUN, NO_RUN), now_s)
            run.decisions.appendleft(
                {
                    "time_s": at_s,
                    "step": attrs.get("step", ""),
                    "command_type": attrs.get("command_type", ""),
                    "action": attrs.get("action", ""),
                    "reason": attrs.get("reason", ""),
                    "command_id": attrs.get("command_id", ""),
                }
            )
        elif name == SEED_TRANSITION:
            run = self._run(forwarded.labels.get(LABEL_RUN, NO_RUN), now_s)
            seed = self._seed(
                run, forwarded.labels.get(LABEL_SEED, ""), forwarded.labels.get(LABEL_LAYER, "")
            )
            if seed is not None:
                seed["stage"] = attrs.get("to", seed["stage"])
                seed["reason"] = attrs.get("reason", "")
                seed["time_s"] = at_s
        elif name in BREAKER_EVENT_NAMES:
            run = self._run(forwarded.labels.get(LABEL_RUN, NO_RUN), now_s)
            run.breakers[attrs.get("breaker", "")] = {
                "state": attrs.get("to", ""),
                "previous": attrs.get("previous", ""),
                "time_s": at_s,
            }
        elif name in CONSERVATIVE_EVENT_NAMES:
            run = self._run(forwarded.labels.get(LABEL_RUN, NO_RUN), now_s)
            run.conservative = {
                "active": CONSERVATIVE_EVENT_NAMES[name],
                "cause": attrs.get("cause", ""),
                "time_s": at_s,
            }

    def series(self, series: pb.AggregatedSeries, labels: Labels, now_s: float) -> None:
        name = series.name
        if name not in (RISK, BREAKER_STATE, CONSERVATIVE, SEED_STAGE, SEED_ALPHA):
            return
        values = dict(labels)
        run = self._run(values.get(LABEL_RUN, NO_RUN), now_s)
        if name == RISK:
            run.risk = series.last
        elif name == BREAKER_STATE:
            breaker = run.breakers.setdefault(values.get("breaker", ""), {"previous": ""})
            breaker["state"] = BREAKER_STATE_NAMES.get(series.last, str(series.last))
        elif name == CONSERVATIVE:
            run.conservative["active"] = series.last >= 1.0
        else:
            seed = self._seed(run, values.get(LABEL_SEED, ""), values.get(LABEL_LAYER, ""))
            if seed is None:
                return
            if name == SEED_STAGE:
                seed["stage"] = _stage_name(series.last)
            else:
                seed["alpha"] = round(series.last, 4)

    def snapshot(self) -> list[dict[str, object]]:
        """Runs, most recently updated first; seeds grouped by layer."""
        runs = sorted(self._runs.values(), key=lambda r: r.updated_s, reverse=True)
        out: list[dict[str, object]] = []
        for run in runs:
            layers: dict[str, list[dict[str, object]]] = {}
            for seed in sorted(run.seeds.values(), key=lambda s: str(s["seed"])):
                layers.setdefault(str(seed["layer"]), []).append(dict(seed))
            out.append(
                {
                    "run": run.run,
                    "updated_s": run.updated_s,
                    "decisions": list(run.decisions),
                    "layers": dict(sorted(layers.items())),
                    "breakers": {k: dict(v) for k, v in sorted(run.breakers.items())},
                    "conservative": dict(run.conservative),
                    "risk": run.risk,
                }
            )
        return out
