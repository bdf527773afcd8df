"""Turns what a step knows (its SystemStatePacket, blueprint metadata, feature coverage,
whether inference missed its deadline) into raw signal values for the gate.

The only stateful part of signal extraction: the loss's moving average and recent
window (for loss delta and volatility) and the recent deadline misses (for timeouts).
Everything else is read straight from the packet's ``training_metrics`` under the names
the trainer and the policy's features already use.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.risk.signals import Signal

# training_metrics key -> signal, read as is.
METRIC_SIGNALS: tuple[tuple[str, Signal], ...] = (
    ("gradient_norm", Signal.GRADIENT_NORM),
    ("gradient_variance", Signal.GRADIENT_VARIANCE),
    ("gradient_conflict_rate", Signal.GRADIENT_CONFLICT),
    ("step_latency_ms", Signal.STEP_LATENCY),
    ("hook_latency_ms", Signal.HOOK_LATENCY),
    ("device_memory_fraction", Signal.DEVICE_MEMORY),
    ("host_memory_fraction", Signal.HOST_MEMORY),
    ("kasmina_apply_latency_ms", Signal.KASMINA_APPLY_LATENCY),
    ("kasmina_finalize_latency_ms", Signal.KASMINA_FINALIZE_LATENCY),
    ("isolation_violations", Signal.ISOLATION_VIOLATIONS),  # Kasmina's count, last step
)
_MEDIAN_ABS_NORMAL = 0.6745  # median of |x| for x standard normal
# Seeds whose blueprint no longer contributes to the model.
_GONE = frozenset(
    {
        pb.SEED_STAGE_DORMANT,
        pb.SEED_STAGE_CULLED,
        pb.SEED_STAGE_EMBARGOED,
        pb.SEED_STAGE_TERMINATED,
    }
)


class BlueprintInfo(Protocol):
    """What the tracker reads of Urza's metadata (``urza_client.BlueprintMetadata``)."""

    @property
    def risk(self) -> float: ...

    @property
    def quarantined(self) -> bool: ...


# Metadata of the requested blueprint ids that is known now (no waiting on Urza), e.g.
# ``lambda ids: cached_catalog.resolve(ids, 0.0).metadata``.
BlueprintLookup = Callable[[Sequence[str]], Mapping[str, BlueprintInfo]]


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    loss_ewma_alpha: float = 0.1  # weight of the newest loss in its moving average
    # Loss rises are relative to max(|moving average|, this floor) (loss units): once a
    # loss is nearly zero, a tiny uptick is not a spike.
    loss_reference_floor: float = 0.05
    loss_window_steps: int = 20  # losses in the volatility window
    timeout_window_decisions: int = 50  # decisions over which deadline misses are counted


@dataclass(frozen=True, slots=True)
class PacketSignals:
    """What a step's packet says on its own, before the decision is known."""

    values: dict[Signal, float]  # no signals.DECISION_SIGNALS among them
    live_blueprints: tuple[str, ...]  # of the seeds still in the model
    blueprint_risk: float  # highest risk among them (0 when Urza knows none)
    quarantined: int  # how many of them are quarantined


class SignalTracker:
    """One per training run, once per decision on the step path: ``observe``, or its two
    halves ``observe_packet`` (what the packet says, e.g. while the policy decides) then
    ``decision_signals`` (what the decision adds)."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()) -> None:
        self.settings = settings
        self._loss_ewma: float | None = None
        self._losses: deque[float] = deque(maxlen=settings.loss_window_steps)
        self._timeouts: deque[bool] = deque(maxlen=settings.timeout_window_decisions)
        self._timeout_count = 0

    def observe(
        self,
        packet: pb.SystemStatePacket,
        *,
        blueprints: BlueprintLookup,
        proposed_blueprint_id: str = "",
        feature_coverage: float | None = None,
        timed_out: bool = False,
    ) -> dict[Signal, float]:
        """Raw signal values for this step (signals without an observation are left out)."""
        seen = self.observe_packet(packet, blueprints=blueprints)
        decided = self.decision_signals(
            seen,
            blueprints=blueprints,
            proposed_blueprint_id=proposed_blueprint_id,
            feature_coverage=feature_coverage,
            timed_out=timed_out,
        )
        return {**seen.values, **decided}

    def observe_packet(
        self, packet: pb.SystemStatePacket, *, blueprints: BlueprintLookup
    ) -> PacketSignals:
        """The packet's signals; advances the loss statistics (once per step)."""
        metrics = packet.training_metrics
        values: dict[Signal, float] = {
            signal: metrics[key] for key, signal in METRIC_SIGNALS if key in metrics
        }
        values[Signal.LOSS_DELTA] = self._loss_delta(packet.training_loss)
        values[Signal.LOSS_VOLATILITY] = loss_volatility(self._losses)
        live = live_blueprints(packet.seed_states)
        risk, quarantined = exposure(live, blueprints)
        return PacketSignals(values, live, risk, quarantined)

    def decision_signals(
        self,
        seen: PacketSignals,
        *,
        blueprints: BlueprintLookup,
        proposed_blueprint_id: str = "",
        feature_coverage: float | None = None,
        timed_out: bool = False,
    ) -> dict[Signal, float]:
        """The signals the decision completes (signals.DECISION_SIGNALS, but the policy's
        risk head, which the gate reads itself): the blueprints of ``seen`` and of the
        proposed germination, the feature coverage, and whether inference missed its
        deadline (counted once)."""
        values: dict[Signal, float] = {}
        risk, quarantined = seen.blueprint_risk, seen.quarantined
        if proposed_blueprint_id and proposed_blueprint_id not in seen.live_blueprints:
            proposed_risk, proposed_quarantined = exposure((proposed_blueprint_id,), blueprints)
            risk = max(risk, proposed_risk)
            quarantined += proposed_quarantined
        values[Signal.BLUEPRINT_RISK] = risk
        values[Signal.BLUEPRINT_QUARANTINE] = float(quarantined)
        if feature_coverage is not None:
            values[Signal.FEATURE_COVERAGE] = feature_coverage
        values[Signal.TIMEOUTS] = float(self._count_timeout(timed_out))
        return values

    def _loss_delta(self, loss: float) -> float:
        if not math.isfinite(loss):
            return math.inf  # a diverged loss is the worst loss delta there is
        ewma = self._loss_ewma
        self._losses.append(loss)
        alpha = self.settings.loss_ewma_alpha
        self._loss_ewma = loss if ewma is None else ewma + alpha * (loss - ewma)
        if ewma is None:
            return 0.0
        return relative_rise(loss, ewma, floor=self.settings.loss_reference_floor)

    def _count_timeout(self, timed_out: bool) -> int:
        window = self._timeouts
        if len(window) == window.maxlen and window[0]:
            self._timeout_count -= 1
        window.append(timed_out)
        self._timeout_count += timed_out
        return self._timeout_count


def relative_rise(value: float, reference: float, *, floor: float = 0.0) -> float:
    """(value - reference) / max(|reference|, floor); a rise from a zero reference with
    no floor reads as +inf."""
    scale = max(abs(reference), floor)
    if scale == 0.0:
        return math.inf if value > reference else 0.0
    return (value - reference) / scale


def loss_volatility(losses: deque[float]) -> float:
    """How much the recent losses jump from one to the next, over |mean|; 0 with fewer
    than three.

    The jitter is a robust estimate from second differences (``l[i+1] - 2 l[i] +
    l[i-1]``; for white noise of deviation s their median magnitude is 0.6745 sqrt(6) s):
    a loss that falls, even steeply or round a bend (a healthy run), has small second
    differences but at the bend, which the median ignores; a loss that oscillates has
    large ones throughout. A single spike is the loss-delta signal's.
    """
    n = len(losses)
    if n < 3:
        return 0.0
    mean = sum(losses) / n
    if mean == 0.0:
        return 0.0
    values = list(losses)
    second = sorted(abs(values[i + 1] - 2.0 * values[i] + values[i - 1]) for i in range(1, n - 1))
    middle = len(second) // 2
    median = second[middle] if len(second) % 2 else (second[middle - 1] + second[middle]) / 2
    return median / (_MEDIAN_ABS_NORMAL * math.sqrt(6.0)) / abs(mean)


def live_blueprints(seeds: Iterable[pb.SeedState]) -> tuple[str, ...]:
    """The distinct blueprints of the seeds still in the model, in seed order."""
    live: dict[str, None] = {}
    for seed in seeds:
        blueprint_id = seed.blueprint_id
        if blueprint_id and seed.stage not in _GONE:
            live[blueprint_id] = None
    return tuple(live)


def exposure(blueprint_ids: Sequence[str], blueprints: BlueprintLookup) -> tuple[float, int]:
    """(highest risk, number quarantined) over ``blueprint_ids``, looked up once.
    Blueprints Urza did not answer for are skipped."""
    if not blueprint_ids:
        return 0.0, 0
    risk = 0.0
    quarantined = 0
    metadata = blueprints(blueprint_ids)
    for blueprint_id in blueprint_ids:
        meta = metadata.get(blueprint_id)
        if meta is not None:
            risk = max(risk, meta.risk)
            quarantined += meta.quarantined
    return risk, quarantined
