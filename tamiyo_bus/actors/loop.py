"""One actor process's loop: play an episode with the policy held now, publish its
segments, take in PolicyUpdates, wait on a full stream by the backpressure rule.

Three things run side by side on the event loop: the episodes (each played in a worker
thread, so the bus keeps being served), the TrajectoryPublisher, and the policy-update
listener (Tamiyo's intake, in the actor's own group, so every actor applies every
update). An update is installed between decisions and an episode takes its policy once,
when it starts: each episode is played by one policy version, which its segments carry.

The actor's risk gate is Tamiyo's: repeated refused updates open its policy-update
breaker, which puts it in conservative mode, and an actor in conservative mode plays
but publishes nothing (``impala_publishing_enabled``). The simulated runs are no risk of
the actor's own, so each decision played while no breaker is open counts as a healthy
one toward leaving the mode.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch

from leyline_vocab.events import BreakerName
from oona.bus import Bus
from oona.events import EventSink, LogEventSink
from oona.keys import Keyring
from oona.metrics import BusMetrics
from oona.streams import Stream
from tamiyo_bus.actors.backpressure import may_play
from tamiyo_bus.actors.settings import ActorLoopSettings
from tamiyo_bus.experience.publisher import TrajectoryPublisher
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.risk.engine import Category
from tamiyo_bus.risk.gate import RiskGate
from tamiyo_bus.security.policy_update import (
    PolicyHolder,
    PolicyUpdateListener,
    PolicyUpdateTransaction,
    RunningPolicy,
)
from tamiyo_bus.sim.actor import SimActor

START_POLICY_ID = "actor-start"
_HEALTHY = "none"


def start_policy(profile: Profile, seed: int) -> PolicyHolder:
    """The profile's initial policy drawn from ``seed``, at version 0, so the learner's
    first update (version 1 or later) replaces it."""
    torch.manual_seed(seed)
    policy = ServingPolicy(PROFILES[profile])
    return PolicyHolder(
        RunningPolicy(policy, START_POLICY_ID, 0, architecture_id(policy), registry_digest())
    )


@dataclass(frozen=True, slots=True)
class ActorProgress:
    """Where an actor stands after an episode (what the command prints)."""

    actor_id: str
    episodes: int
    mean_return: float  # the last episode's, over its runs
    policy_version: int  # that played the last episode
    segments_published: int
    segments_shed: int  # evicted from the full publish queue, oldest first
    segments_queued: int
    withheld_episodes: int  # played in conservative mode, nothing published
    backpressure_waits: int  # episodes that waited for the queue to drain
    backpressure_timeouts: int  # waits that ran out (the episode played anyway)
    backpressure_wait_s: float  # seconds waited in all
    policy_updates_applied: int
    policy_updates_refused: Mapping[str, int]  # by reason
    conservative: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def refused_updates(metrics: BusMetrics) -> dict[str, int]:
    """Policy-stream entries refused, by reason: by the bus (signature, signer's role,
    freshness) or by the update's transaction (its own signature, version, shape)."""
    counters = metrics.snapshot()["counters"]
    assert isinstance(counters, dict)
    refused: dict[str, int] = {}
    for series in counters.get("rejected", []):
        labels = series["labels"]
        if labels.get("stream") == Stream.POLICY:
            reason = labels.get("reason", "")
            refused[reason] = refused.get(reason, 0) + int(series["value"])
    return refused


@dataclass(slots=True)
class _Waiting:
    waits: int = 0
    timeouts: int = 0
    seconds: float = 0.0


class ActorLoop:
    """An actor's episodes, publisher and policy-update intake on one bus client."""

    def __init__(
        self,
        bus: Bus,
        keyring: Keyring,
        settings: ActorLoopSettings,
        *,
        holder: PolicyHolder | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.settings = s = settings
        self.bus = bus
        self.holder = holder or start_policy(s.profile, s.policy_seed)
        sink = events or LogEventSink()
        self.gate = RiskGate(s.risk, sink, metrics=bus.metrics)
        self.publisher = TrajectoryPublisher(bus, s.play.experience)
        transaction = PolicyUpdateTransaction(
            self.holder, keyring, s.policy_update, metrics=bus.metrics, events=sink,
            breaker=self.gate.breakers[BreakerName.POLICY_UPDATE],
        )  # fmt: skip
        self.listener = PolicyUpdateListener(
            bus, transaction, keyring, consumer_name=s.actor_id, group=s.policy_group
        )
        self.actor = SimActor(
            s.play,
            self.holder,
            self.publisher.submit,
            actor_id=s.actor_id,
            publishing_allowed=lambda: self.gate.conservative.impala_publishing_enabled,
        )
        self._waiting = _Waiting()

    def progress(self) -> ActorProgress:
        played, sent, w = self.actor.stats, self.publisher.stats, self._waiting
        return ActorProgress(
            actor_id=self.settings.actor_id,
            episodes=played.episodes,
            mean_return=played.last_mean_return,
            policy_version=played.policy_version,
            segments_published=sent.published,
            segments_shed=sent.dropped,
            segments_queued=self.publisher.pending,
            withheld_episodes=played.withheld_episodes,
            backpressure_waits=w.waits,
            backpressure_timeouts=w.timeouts,
            backpressure_wait_s=round(w.seconds, 3),
            policy_updates_applied=int(self.bus.metrics.count("policy_updates_applied")),
            policy_updates_refused=refused_updates(self.bus.metrics),
            conservative=self.gate.conservative.active,
        )

    async def run(
        self,
        stop: asyncio.Event,
        *,
        episodes: int = 0,
        on_episode: Callable[[ActorProgress], None] | None = None,
    ) -> ActorProgress:
        """Play until ``stop`` is set or ``episodes`` more are played (0: no limit),
        handing ``on_episode`` the progress after each; then publish what is queued
        (one try each, so a dead bus does not hold the exit) and stop."""
        until = self.actor.stats.episodes + episodes if episodes > 0 else None
        halt = asyncio.Event()
        services = [
            asyncio.create_task(self.publisher.run(halt)),
            asyncio.create_task(self.listener.run(halt)),
        ]
        try:
            while not stop.is_set() and (until is None or self.actor.stats.episodes < until):
                await self._wait_until_drained(stop)
                if stop.is_set():
                    break
                await asyncio.to_thread(self._play_episode)
                if on_episode is not None:
                    on_episode(self.progress())
        finally:
            halt.set()
            await asyncio.gather(*services)
        return self.progress()

    def _play_episode(self) -> None:
        episodes = self.actor.play()
        if self.gate.conservative.active:
            self._observe_healthy(sum(len(e.records) for e in episodes))

    def _observe_healthy(self, decisions: int) -> None:
        """Account an episode's decisions toward leaving conservative mode."""
        mode, breakers = self.gate.conservative, self.gate.breakers
        for _ in range(decisions):
            if mode.observe(Category.GREEN, _HEALTHY, breakers.none_open()) is not None:
                break

    async def _wait_until_drained(self, stop: asyncio.Event) -> None:
        """The backpressure rule (``backpressure.may_play``): wait for the queued
        segments to go out, up to ``backpressure_wait_s``."""
        resume = self.settings.backpressure_resume_segments

        def drained() -> bool:
            return may_play(self.publisher.pending, resume)

        if drained():
            return
        clock = asyncio.get_running_loop().time
        started = clock()
        deadline = started + self.settings.backpressure_wait_s
        poll_s = self.settings.backpressure_poll_ms / 1000.0
        self._waiting.waits += 1
        while not drained() and not stop.is_set():
            if clock() >= deadline:
                self._waiting.timeouts += 1
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(poll_s, deadline - clock()))
        self._waiting.seconds += clock() - started
