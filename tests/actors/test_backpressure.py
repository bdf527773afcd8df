"""The actors' backpressure. With a learner behind, an actor plays its next episode only
once its last one is on the stream, so no episode loses segments to pacing. With no
learner consuming, the trajectories stream fills to its cap; the actor then waits for
its queue to drain, past its wait plays on, and the queue sheds its oldest segments:
every segment is published, queued or shed (counted), the queue never grows past its
bound, and nothing crashes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from oona.bus import Bus
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.actors.backpressure import may_play
from tamiyo_bus.actors.loop import ActorProgress
from tests.actors.helpers import SHORT, actor_loop, with_queue

STREAM_CAP = 8
QUEUE_MAX = 12
EPISODES = 6


def test_the_next_episode_is_played_once_no_more_than_the_resume_bound_waits() -> None:
    assert may_play(0, 0)
    assert not may_play(1, 0)
    assert may_play(3, 3)
    assert not may_play(4, 3)


async def _learner_reading(bus: Bus, group: str, stop: asyncio.Event) -> None:
    """Read and ack every trajectory segment, as a learner that keeps up would."""
    key = bus.key(Stream.TRAJECTORIES)
    while not stop.is_set():
        read: Any = await bus.redis.xreadgroup(group, "learner", {key: ">"}, count=8, block=20)
        for _, entries in read:
            if entries:
                await bus.redis.xack(key, group, *[entry_id for entry_id, _ in entries])


async def test_a_lagging_learner_makes_the_actor_wait_and_sheds_nothing(
    settings: OonaSettings,
) -> None:
    # a stream that holds less than an episode, a queue far above one: the queue bounds
    # memory, the wait paces the actor
    capped = settings.with_overrides(stream_caps={Stream.TRAJECTORIES.value: 4})
    actor, bus = actor_loop(capped, replace(SHORT, backpressure_wait_s=60.0))
    group = "impala-learner"
    await bus.redis.xgroup_create(bus.key(Stream.TRAJECTORIES), group, id="0", mkstream=True)
    rows: list[ActorProgress] = []
    first_played = asyncio.Event()

    def on_episode(progress: ActorProgress) -> None:
        rows.append(progress)
        first_played.set()

    playing = asyncio.create_task(
        actor.run(asyncio.Event(), episodes=EPISODES, on_episode=on_episode)
    )
    await first_played.wait()  # the learner starts behind: the first episode waits in the queue
    stop = asyncio.Event()
    learner = asyncio.create_task(_learner_reading(bus, group, stop))
    progress = await playing
    stop.set()
    await learner

    assert progress.episodes == EPISODES
    assert progress.segments_shed == 0
    assert progress.backpressure_waits >= 1
    assert progress.backpressure_timeouts == 0
    submitted = [p.segments_published + p.segments_shed + p.segments_queued for p in rows]
    own = [after - before for before, after in zip([0, *submitted[:-1]], submitted, strict=True)]
    queued = [p.segments_queued for p in rows]
    assert all(q <= n for q, n in zip(queued, own, strict=True)), (queued, own)
    await bus.close()


async def test_with_no_learner_the_actor_waits_plays_on_and_the_queue_sheds_the_oldest(
    settings: OonaSettings,
) -> None:
    capped = settings.with_overrides(stream_caps={Stream.TRAJECTORIES.value: STREAM_CAP})
    loop_settings = replace(with_queue(SHORT, QUEUE_MAX), backpressure_wait_s=0.2)
    actor, bus = actor_loop(capped, loop_settings)
    # the learner's group exists and reads nothing: nothing is acked, nothing trimmed
    await bus.redis.xgroup_create(bus.key(Stream.TRAJECTORIES), "impala-learner", id="0",
                                  mkstream=True)  # fmt: skip
    queued: list[int] = []

    progress = await actor.run(
        asyncio.Event(),
        episodes=EPISODES,
        on_episode=lambda p: queued.append(p.segments_queued),
    )

    assert await bus.redis.xlen(bus.key(Stream.TRAJECTORIES)) == STREAM_CAP
    assert progress.episodes == EPISODES
    assert progress.segments_published == STREAM_CAP
    assert progress.segments_shed > 0
    assert 0 < progress.backpressure_timeouts <= progress.backpressure_waits
    assert progress.backpressure_wait_s >= 0.2 * progress.backpressure_timeouts
    assert max(queued) <= QUEUE_MAX  # memory bounded by the queue
    submitted = actor.publisher.stats.submitted
    assert submitted == progress.segments_published + progress.segments_shed + (
        progress.segments_queued
    )
    await bus.close()
