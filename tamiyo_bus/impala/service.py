"""The V-trace learner on the bus: actors' rewarded segments in, signed policies out.

Two lanes run until stop. The intake consumes the trajectories stream through group
``impala-learner`` (each process its own consumer name): a segment that is not
rewarded is Simic's PPO learner's food and is acked untouched; a hostile one is refused
with Simic's checks (``simic.intake.check_segment``: Oona dead-letters it); a held-out
one goes to the gate's data; the rest into the batch buffer. A segment is acked once it
is in the buffer, so a crash loses what was buffered and not yet learnt (at most
``buffer_max_segments`` segments: samples, never a decision); a full buffer holds the
intake back.

The learning lane takes ``batch_segments`` at a time and runs the update in a worker
thread (torch never runs on the event loop); a refused update puts its batch back.
On the lead rank, a candidate that passed the gate is published as a signed
PolicyUpdate with Simic's publisher and key role, every ``checkpoint_every_updates``
the state goes to the asynchronous checkpointer, and after every update the sink gets
an ``ImpalaReport``. Under torchrun every rank runs this service on its own share of
the stream; each round the ranks agree whether to stop, wait or step
(``impala.pacing``), so a stop on one rank stops them all, and a rank starved of
segments holds the others at most ``starved_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import RejectedMessage
from oona.events import EventSink
from oona.keys import Keyring, Signer
from oona.payloads import decode
from oona.streams import Stream
from tamiyo_bus.impala.checkpoint import learner_state, restore_learner
from tamiyo_bus.impala.distributed import RankInfo, sum_across
from tamiyo_bus.impala.learner import POLICY_ID, ImpalaLearner, ImpalaUpdateStats
from tamiyo_bus.impala.pacing import Pace, agreed_pace
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.impala.telemetry import ImpalaReport, ImpalaSink, lag_percentiles
from tamiyo_bus.learning.async_checkpoint import (
    AsyncCheckpointer,
    CheckpointSettings,
    load_latest,
)
from tamiyo_bus.policy.profiles import PROFILES
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.simic.gate import is_held_out
from tamiyo_bus.simic.intake import check_segment
from tamiyo_bus.simic.publishing import Candidate, PolicyPublisher

log = logging.getLogger(__name__)
LAGS_KEPT = 10_000
_STOP_POLL_S = 0.2


@dataclass
class ImpalaServiceStats:
    segments_consumed: int = 0  # rewarded, checked, buffered or held out
    segments_rejected: int = 0  # hostile: dead-lettered
    segments_ignored: int = 0  # not rewarded (Simic's PPO learner's)
    segments_held_out: int = 0
    updates_refused: int = 0  # breaker open or paused: the batch was kept
    policies_published: int = 0  # signed PolicyUpdates the bus took
    # actor-to-learner lag of each learnt segment, seconds (the latest LAGS_KEPT)
    lags_s: deque[float] = field(default_factory=lambda: deque(maxlen=LAGS_KEPT))


@dataclass(frozen=True, slots=True)
class _Buffered:
    segment: pb.Trajectory
    issued_at_ns: int


def start_learner(
    settings: ImpalaSettings, rank: RankInfo, device: torch.device, events: EventSink | None
) -> ImpalaLearner:
    """The profile's initial policy from the seed, resumed from the latest checkpoint
    when there is one; on several ranks, every rank then holds the lead's weights."""
    torch.manual_seed(settings.seed)
    policy = ReferencePolicy(PROFILES[settings.profile]).to(device)
    learner = ImpalaLearner(settings, policy, rank=rank, events=events)
    saved = load_latest(settings.checkpoint_dir)
    if saved is not None:
        restore_learner(learner, saved)
        log.info("impala learner resumed at update %d", learner.progress.updates)
    learner.align_ranks()
    return learner


class ImpalaLearnerService:
    def __init__(
        self,
        bus: Bus,
        settings: ImpalaSettings,
        signer: Signer,
        *,
        keyring: Keyring,
        rank: RankInfo | None = None,
        learner: ImpalaLearner | None = None,
        events: EventSink | None = None,
        device: torch.device | None = None,
        sink: ImpalaSink | None = None,
    ) -> None:
        self.settings = s = settings
        self.rank = rank or RankInfo()
        self.device = device or torch.device("cpu")
        self.learner = learner or start_learner(s, self.rank, self.device, events)
        self.stats = ImpalaServiceStats()
        self.sink = sink if self.rank.lead else None
        consumer = s.consumer if not self.rank.distributed else f"{s.consumer}-rank{self.rank.rank}"
        subscription = Subscription(
            group=s.group,
            consumer=consumer,
            streams=(Stream.TRAJECTORIES,),
            accepted_types=frozenset({pb.MESSAGE_TYPE_TRAJECTORY}),
            max_age_ms=s.experience_max_age_s * 1000.0,
        )
        self.consumer = Consumer(bus, subscription, self._handle, keyring, events=events)
        self.publisher = PolicyPublisher(
            bus, signer, policy_id=POLICY_ID, architecture_id=architecture_id(self.learner.policy)
        )
        self.checkpointer = (
            AsyncCheckpointer(CheckpointSettings(s.checkpoint_dir, s.checkpoint_keep_last))
            if self.rank.lead and s.checkpoint_every_updates > 0
            else None
        )
        self._buffer: deque[_Buffered] = deque()
        self._changed = asyncio.Condition()
        self._checkpointed = self.learner.progress.updates  # the one it started from

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set on any rank. The intake is cancelled once learning
        ended (its segment in flight, unacked, is delivered again), so a full buffer
        cannot hold it."""
        try:
            async with asyncio.TaskGroup() as lanes:
                intake = lanes.create_task(self.consumer.run(stop))
                await self._learn(stop)
                stop.set()
                intake.cancel()
        finally:
            self.close()

    def health(self) -> dict[str, object]:
        """The figures a status line or Weatherlight's /healthz shows (a lag is null
        before any segment was learnt)."""
        p, s = self.learner.progress, self.stats
        lags = lag_percentiles(s.lags_s)
        p50, p99 = (None, None) if math.isnan(lags[0]) else (round(lags[0], 3), round(lags[1], 3))
        return {
            "learner": "vtrace",
            "updates": p.updates,
            "transitions_learnt": p.transitions_learnt,
            "segments_consumed": s.segments_consumed,
            "segments_rejected": s.segments_rejected,
            "candidates_published": p.candidates_published,
            "candidates_rejected": p.candidates_rejected,
            "policies_published": s.policies_published,  # the bus took them
            "policy_version": p.running_version,
            "buffered": self.buffered,
            "lag_p50_s": p50,
            "lag_p99_s": p99,
            "waiting_for": self.consumer.waiting_for,
        }

    def report(self, update: ImpalaUpdateStats | None = None) -> ImpalaReport:
        s = self.stats
        p50, p99 = lag_percentiles(s.lags_s)
        return ImpalaReport(
            dataclasses.replace(self.learner.progress),
            {
                "consumed": s.segments_consumed,
                "rejected": s.segments_rejected,
                "ignored": s.segments_ignored,
                "held_out": s.segments_held_out,
            },
            s.policies_published,
            self.buffered / self.settings.buffer_max_segments,
            p50,
            p99,
            update,
        )

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()

    # ---------------------------------------------------------------- intake

    async def _handle(self, delivery: Delivery) -> None:
        segment = decode(pb.Trajectory, delivery.envelope.payload)
        if not segment.rewarded:
            self.stats.segments_ignored += 1
            return
        try:
            await asyncio.to_thread(check_segment, segment)
        except RejectedMessage:
            self.stats.segments_rejected += 1
            raise
        self.stats.segments_consumed += 1
        if is_held_out(segment.trajectory_id, self.settings.held_out_fraction):
            self.stats.segments_held_out += 1
            await asyncio.to_thread(self.learner.hold_out, segment)
            return
        async with self._changed:
            await self._changed.wait_for(
                lambda: len(self._buffer) < self.settings.buffer_max_segments
            )
            self._buffer.append(_Buffered(segment, delivery.envelope.issued_at_ns))
            self._changed.notify_all()

    # -------------------------------------------------------------- learning

    async def learn_once(
        self, stop: asyncio.Event, *, partial: bool = False
    ) -> ImpalaUpdateStats | None:
        """One update from a full batch, if one is buffered (None: none was), or with
        ``partial`` from what is buffered (the ranks agreed to step without waiting for
        a starved one), and the publication of its candidate."""
        n = self.settings.batch_segments
        if len(self._buffer) < n and not partial:
            return None
        async with self._changed:
            batch = [self._buffer.popleft() for _ in range(min(n, len(self._buffer)))]
            self._changed.notify_all()
        update = await asyncio.to_thread(self.learner.update, [b.segment for b in batch])
        if update.refused:
            async with self._changed:
                self._buffer.extendleft(reversed(batch))
            self.stats.updates_refused += 1
            self._report(update)
            return update
        finished_ns = time.time_ns()
        self.stats.lags_s.extend((finished_ns - b.issued_at_ns) / 1e9 for b in batch)
        if update.candidate is not None:
            await self._publish(update.candidate, stop)
        self._checkpoint()
        self._report(update)
        return update

    def _report(self, update: ImpalaUpdateStats) -> None:
        if self.sink is not None:
            self.sink(self.report(update))

    def _checkpoint(self) -> None:
        every = self.settings.checkpoint_every_updates
        updates = self.learner.progress.updates
        if self.checkpointer is None or updates % every or updates == self._checkpointed:
            return
        self._checkpointed = updates
        tensors, metadata = learner_state(self.learner)
        self.checkpointer.submit(updates, tensors, metadata)

    async def _publish(self, candidate: Candidate, stop: asyncio.Event) -> None:
        if await self.publisher.publish(candidate, stop):
            self.stats.policies_published += 1
            log.info("published policy version %d", candidate.version)

    async def _batch_ready(self, stop: asyncio.Event) -> None:
        """Until a full batch is buffered or stop is set, at most one polling interval
        (the ranks' rounds go on while none is full)."""
        n = self.settings.batch_segments
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(self._buffer) >= n or stop.is_set()),
                    timeout=_STOP_POLL_S,
                )

    async def _agree(self, stop: asyncio.Event, waited_out: bool) -> tuple[Pace, bool]:
        """This round's pace on every rank, and whether any rank holds a full batch."""
        full_here = len(self._buffer) >= self.settings.batch_segments
        stopping, full, late = await asyncio.to_thread(
            sum_across, [int(stop.is_set()), int(full_here), int(waited_out)],
            self.rank, self.device,
        )  # fmt: skip
        return agreed_pace(stopping, full, late, self.rank.world_size), full > 0

    async def _learn(self, stop: asyncio.Event) -> None:
        full_since: float | None = None  # the round some rank first held a full batch
        while True:
            await self._batch_ready(stop)
            starved_s = self.settings.starved_wait_s
            waited_out = full_since is not None and time.monotonic() - full_since >= starved_s
            pace, any_full = await self._agree(stop, waited_out)
            if pace is Pace.STOP:
                return
            if pace is Pace.WAIT:
                full_since = (full_since or time.monotonic()) if any_full else None
                continue
            full_since = None
            update = await self.learn_once(stop, partial=True)
            if update is not None and update.refused:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.refused_retry_s)
