"""With no learner consuming, the trajectories stream fills to its cap; the actor then
waits for room in its publish queue, past its wait plays on and sheds the oldest
queued segments: every segment is published, queued or shed (counted), the queue never
grows past its bound, and nothing crashes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.actors.backpressure import episode_fits
from tests.actors.helpers import SHORT, actor_loop, with_queue

STREAM_CAP = 8
QUEUE_MAX = 12
EPISODES = 6


def test_an_episode_is_played_when_its_segments_fit_beside_what_waits() -> None:
    assert episode_fits(0, 50, 12)  # an empty queue takes any episode
    assert episode_fits(4, 8, 12)
    assert not episode_fits(5, 8, 12)
    assert episode_fits(5, 0, 12)  # nothing expected (the first episode, or withheld)


async def test_a_full_stream_makes_the_actor_wait_then_shed_the_oldest(
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
