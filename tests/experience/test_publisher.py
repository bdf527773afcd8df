"""Experience onto the real server: segments arrive in order as signed entries; a learner
that lags a capped stream makes the publisher wait and keep its segments, and past its
own bound it sheds the oldest, counted; a run in conservative mode records nothing."""

from __future__ import annotations

import asyncio

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer
from oona.keys import Keyring
from oona.streams import Stream
from tamiyo_bus.experience.publisher import TrajectoryPublisher
from tamiyo_bus.experience.segments import ExperienceSettings
from tests.bus.helpers import Recorder, subscription, wait_for
from tests.experience.test_recorder import SYNCHRONOUS, run
from tests.policy.helpers import make_stack

FAST_RETRY = ExperienceSettings(
    publish_retry_base_ms=5.0, publish_retry_max_ms=20.0, publish_queue_max_segments=3
)


def segment(n: int) -> pb.Trajectory:
    return pb.Trajectory(trajectory_id=f"run/{n}", training_run_id="run")


def learner(bus: Bus, keyring: Keyring, received: Recorder) -> Consumer:
    accepted = subscription(Stream.TRAJECTORIES, group="learner")
    return Consumer(bus, accepted, received, keyring)


def ids(received: Recorder) -> list[str]:
    return [pb.Trajectory.FromString(d.envelope.payload).trajectory_id for d in received.deliveries]


async def consumer_has(received: Recorder, count: int) -> None:
    await wait_for(lambda: _at_least(received, count))


async def _at_least(received: Recorder, count: int) -> bool:
    return len(received.deliveries) >= count


async def test_segments_reach_the_learner_in_order(bus: Bus, keyring: Keyring) -> None:
    publisher = TrajectoryPublisher(bus, FAST_RETRY)
    for n in range(3):
        publisher.submit(segment(n))
    assert await publisher.flush(timeout_s=5.0)
    received = Recorder()
    await learner(bus, keyring, received).drain()
    assert ids(received) == ["run/0", "run/1", "run/2"]
    assert received.deliveries[0].envelope.message_type == pb.MESSAGE_TYPE_TRAJECTORY


async def test_a_lagging_learner_holds_the_publisher_back_and_the_oldest_is_shed(
    bus: Bus, keyring: Keyring
) -> None:
    bus.settings = bus.settings.with_overrides(stream_caps={Stream.TRAJECTORIES: 2})
    received = Recorder()
    consumer = learner(bus, keyring, received)
    await consumer.start()  # the learner's group exists and has read nothing
    publisher = TrajectoryPublisher(bus, FAST_RETRY)
    for n in range(2):
        publisher.submit(segment(n))
    assert await publisher.flush(timeout_s=5.0)

    for n in range(2, 6):  # the stream is full: these wait, and the queue holds three
        publisher.submit(segment(n))
    assert not await publisher.flush(timeout_s=0.3)
    assert publisher.stats.failures >= 1 and publisher.stats.dropped == 1
    assert publisher.pending == 3

    stop = asyncio.Event()
    catching_up = asyncio.create_task(consumer.run(stop))  # the learner reads and acks
    assert await publisher.flush(timeout_s=5.0)
    await consumer_has(received, 5)
    stop.set()
    await asyncio.wait_for(catching_up, 5.0)
    assert ids(received) == ["run/0", "run/1", "run/3", "run/4", "run/5"]
    assert publisher.stats.published == 5


async def test_run_publishes_until_stopped_and_then_what_is_queued(bus: Bus) -> None:
    publisher = TrajectoryPublisher(bus, FAST_RETRY)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    publisher.submit(segment(0))
    stop.set()
    await asyncio.wait_for(task, 5.0)
    assert publisher.stats.published == 1 and publisher.pending == 0


def test_a_run_in_conservative_mode_records_no_experience() -> None:
    segments: list[pb.Trajectory] = []
    stack = make_stack(settings=SYNCHRONOUS, experience=segments.append)
    run(stack, (10, 20))
    stack.tamiyo.risk.conservative.trigger("test")
    run(stack, (30, 40))
    stack.tamiyo.end_run(stack.packet(50))
    stack.tamiyo.close()
    (segment_,) = segments
    assert [s.decision_step for s in segment_.steps] == [10, 20]
    assert stack.tamiyo.experience is not None and stack.tamiyo.experience.withheld == 2
