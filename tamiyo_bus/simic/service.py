"""Simic's learner as a service on the bus: intake, learning loop, publishing.

Two lanes run until stop: the intake consumes trajectories and field reports into the
store (group ``simic-learner``), and the learning loop runs the learner's cycle in a
worker thread (torch work never blocks the event loop), publishing each candidate that
passed the gate, signed with Simic's key. ``health`` says what the learner waits for.
The app composes it (Weatherlight's supervisor, or the ``learner`` command); telemetry
and events reach the bus through the sink and event sink it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from oona.bus import Bus
from oona.events import EventSink
from oona.keys import Keyring, Signer
from tamiyo_bus.policy.checkpoint import load_checkpoint
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.profiles import PROFILES
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.simic.intake import ExperienceIntake
from tamiyo_bus.simic.learner import POLICY_ID, LearnerSink, SimicLearner
from tamiyo_bus.simic.publishing import Candidate, PolicyPublisher
from tamiyo_bus.simic.settings import LearnerSettings
from tamiyo_bus.simic.store import ExperienceStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartPolicy:
    policy: ReferencePolicy
    normalizer: NormalizerSnapshot | None  # the checkpoint's feature statistics
    version: int


def start_policy(settings: LearnerSettings) -> StartPolicy:
    """What the learner starts from: the start checkpoint (what Tamiyo runs), or the
    profile's initial policy from the seed."""
    torch.manual_seed(settings.seed)
    policy = ReferencePolicy(PROFILES[settings.profile])
    if settings.start_checkpoint is None:
        return StartPolicy(policy, None, 0)
    info, normalizer = load_checkpoint(settings.start_checkpoint, policy)
    return StartPolicy(policy, normalizer, info.policy_version)


class LearnerService:
    """The learner's two lanes; ``run`` until stop, then the replay is saved."""

    def __init__(
        self,
        bus: Bus,
        keyring: Keyring,
        signer: Signer,
        learner: SimicLearner,
        *,
        events: EventSink | None = None,
    ) -> None:
        s = learner.settings
        self.learner = learner
        self.intake = ExperienceIntake(
            bus,
            keyring,
            learner.store,
            group=s.group,
            consumer=s.consumer,
            held_out_fraction=s.held_out_fraction,
            max_age_ms=s.experience_max_age_s * 1000.0,
            events=events,
        )
        self.publisher = PolicyPublisher(
            bus, signer, policy_id=POLICY_ID, architecture_id=architecture_id(learner.policy)
        )
        self._wake = asyncio.Event()

    @classmethod
    def open(
        cls,
        bus: Bus,
        keyring: Keyring,
        signer: Signer,
        settings: LearnerSettings,
        *,
        events: EventSink | None = None,
        sink: LearnerSink | None = None,
    ) -> LearnerService:
        """The service on its own store, from the settings' start policy (or the
        learner's checkpoint, when it has one)."""
        start = start_policy(settings)
        store = ExperienceStore(settings.store_path)
        learner = SimicLearner(
            settings,
            store,
            start.policy,
            normalizer=start.normalizer,
            start_version=start.version,
            events=events,
            sink=sink,
        )
        return cls(bus, keyring, signer, learner, events=events)

    def health(self) -> Mapping[str, object]:
        h = self.learner.health()
        return {
            "waiting_for": [w.value for w in h.waiting_for],
            "ready_decisions": h.ready_decisions,
            "awaiting_reports": h.awaiting_reports,
            "awaiting_successors": h.awaiting_successors,
            "updates": h.updates,
            "policy_version": h.policy_version,
            "candidates_published": self.learner.progress.candidates_published,
            "candidates_rejected": self.learner.progress.candidates_rejected,
        }

    async def run(self, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as lanes:
                lanes.create_task(self.intake.run(stop))
                lanes.create_task(self._learn(stop))
        finally:
            await asyncio.to_thread(self.learner.save_replay)

    def close(self) -> None:
        self.learner.store.close()

    def wake(self) -> None:
        """Run the next cycle now (tests, and anyone who knows new experience is in)."""
        self._wake.set()

    async def cycle(self, stop: asyncio.Event) -> bool:
        """One learning cycle and the publication of its candidate; True when it
        updated (another may be due at once)."""
        result = await asyncio.to_thread(self.learner.cycle)
        if result.candidate is not None:
            await self._publish(result.candidate, stop)
        return result.update is not None and result.update.refused is None

    async def _publish(self, candidate: Candidate, stop: asyncio.Event) -> None:
        if await self.publisher.publish(candidate, stop):
            await asyncio.to_thread(self.learner.delivered, candidate)
            log.info("published policy version %d", candidate.version)

    async def _learn(self, stop: asyncio.Event) -> None:
        undelivered = self.learner.undelivered()
        if undelivered is not None:
            await self._publish(undelivered, stop)
        interval_s = self.learner.settings.learn_interval_s
        while not stop.is_set():
            if await self.cycle(stop):
                continue
            waiting = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            await asyncio.wait(waiting, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
            for task in waiting:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._wake.clear()
