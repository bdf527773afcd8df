"""What `/healthz` answers (pure): is the telemetry path actually working?

Unhealthy (HTTP 503) when any of these holds:
- the bus could not be read, or the last lag sample is older than `lag_sample_max_age_s`
  (Nissa's own loop is stuck);
- a consumer group is behind by more than `max_group_lag_entries` (on the emergency
  stream: `max_emergency_lag_entries`);
- no aggregate came from the telemetry hub for `hub_silence_s` (the hub sends one per
  window even when idle, so silence means it is down or cut off);
- a source listed in `expected_sources` was not seen for `source_silence_s`;
- a component registered with Nissa (Weatherlight) reports itself unhealthy;
- a CRITICAL message was refused (after its signature verified: a producer whose clock
  is skewed, say) in the last `urgent_rejection_window_s`.

Other sources' last-seen ages are reported but do not fail the check: a training run
that ended is not an outage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from oona.streams import Stream


@dataclass(frozen=True)
class HealthSettings:
    max_group_lag_entries: int = 10_000
    max_emergency_lag_entries: int = 100
    lag_sample_max_age_s: float = 10.0
    hub_silence_s: float = 10.0
    expected_sources: tuple[str, ...] = ()
    source_silence_s: float = 60.0
    urgent_rejection_window_s: float = 300.0


@dataclass(frozen=True)
class LagSample:
    """Per stream, per group: entries not yet acked; or why they could not be read."""

    taken_s: float
    lag: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    healthy: bool
    detail: Mapping[str, object] = field(default_factory=dict)


class HealthComponent(Protocol):
    """Something else whose health /healthz includes (Weatherlight's supervisor)."""

    def health(self) -> ComponentStatus: ...


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    problems: tuple[str, ...]


def evaluate(
    *,
    now_s: float,
    started_s: float,
    lag: LagSample | None,
    hub_last_seen_s: float | None,
    sources_last_seen_s: Mapping[str, float],
    components: Sequence[ComponentStatus],
    settings: HealthSettings,
    urgent_rejections: Sequence[str] = (),
) -> Verdict:
    """`urgent_rejections`: the refused CRITICAL messages of the last
    `urgent_rejection_window_s`, newest first."""
    problems: list[str] = []
    up_s = now_s - started_s
    if lag is None:
        if up_s > settings.lag_sample_max_age_s:
            problems.append("bus lag was never sampled")
    elif lag.error is not None:
        problems.append(f"bus unreachable: {lag.error}")
    elif now_s - lag.taken_s > settings.lag_sample_max_age_s:
        problems.append(f"bus lag sample is {now_s - lag.taken_s:.0f} s old")
    else:
        for stream, groups in sorted(lag.lag.items()):
            limit = (
                settings.max_emergency_lag_entries
                if stream == Stream.EMERGENCY
                else settings.max_group_lag_entries
            )
            for group, behind in sorted(groups.items()):
                if behind > limit:
                    problems.append(f"group {group} is {behind} entries behind on {stream}")
    if hub_last_seen_s is None:
        if up_s > settings.hub_silence_s:
            problems.append(f"no aggregate from the telemetry hub in {up_s:.0f} s")
    elif now_s - hub_last_seen_s > settings.hub_silence_s:
        problems.append(f"telemetry hub silent for {now_s - hub_last_seen_s:.0f} s")
    for source in settings.expected_sources:
        seen = sources_last_seen_s.get(source)
        if seen is None:
            if up_s > settings.source_silence_s:
                problems.append(f"source {source} never seen")
        elif now_s - seen > settings.source_silence_s:
            problems.append(f"source {source} silent for {now_s - seen:.0f} s")
    for component in components:
        if not component.healthy:
            problems.append(f"{component.name} unhealthy")
    if urgent_rejections:
        problems.append(
            f"urgent message rejected {len(urgent_rejections)} times in the last "
            f"{settings.urgent_rejection_window_s:.0f} s (latest: {urgent_rejections[0]})"
        )
    return Verdict(not problems, tuple(problems))
