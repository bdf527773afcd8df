"""An actor takes in PolicyUpdates as Tamiyo does: one signed by the learner's (Simic's)
key is installed and plays the next episode; an unsigned one, one signed by a key
trusted as another role, and one from a key nobody trusts are refused and counted.
Refusals in a row open its policy-update breaker: the actor goes conservative and
plays on, publishing nothing."""

from __future__ import annotations

import asyncio

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.keys import Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.actors.loop import ActorLoop
from tamiyo_bus.security.policy_update import publish_policy_update
from tests.actors.helpers import KEYS, actor_loop, learner_update, role_bus


async def _versions(bus: Bus, reader: str) -> list[int]:
    """The policy version of every decision on the trajectories stream, read as the
    learner reads them (a group of their own, from the start)."""
    versions: list[int] = []

    async def take(delivery: Delivery) -> None:
        segment = pb.Trajectory.FromString(delivery.envelope.payload)
        versions.extend(step.policy_version for step in segment.steps)

    subscription = Subscription(
        group=reader, consumer=reader, streams=(Stream.TRAJECTORIES,),
        accepted_types=frozenset({pb.MESSAGE_TYPE_TRAJECTORY}),
    )  # fmt: skip
    await Consumer(bus, subscription, take, KEYS.keyring).drain()
    return versions


async def _forgeries(settings: OonaSettings, actor: ActorLoop) -> None:
    """Three updates, each newer than the last genuine one, none of them the learner's."""
    simic = role_bus(settings, "simic")
    unsigned = learner_update(actor.holder, 3, KEYS.signer("simic"))
    unsigned.ClearField("signature")
    await publish_policy_update(simic, unsigned)
    await publish_policy_update(simic, learner_update(actor.holder, 4, KEYS.signer("tamiyo")))
    stranger = Signer.generate()
    outsider = role_bus(settings, "simic", signer=stranger)
    await publish_policy_update(outsider, learner_update(actor.holder, 5, stranger))
    await simic.close()
    await outsider.close()


async def test_a_learner_update_is_applied_between_episodes_and_forgeries_refused(
    settings: OonaSettings,
) -> None:
    actor, bus = actor_loop(settings)
    stop = asyncio.Event()
    await actor.run(stop, episodes=1)
    first = await _versions(bus, "before")
    assert first and set(first) == {0}

    simic = role_bus(settings, "simic")
    await publish_policy_update(simic, learner_update(actor.holder, 2, KEYS.signer("simic")))
    await _forgeries(settings, actor)
    await actor.listener.consumer.drain()
    progress = await actor.run(stop, episodes=1)

    played = await _versions(bus, "after")
    assert played[: len(first)] == first and set(played[len(first) :]) == {2}
    assert progress.policy_version == 2 and actor.holder.current().version == 2
    assert progress.policy_updates_applied == 1
    assert progress.policy_updates_refused == {
        "missing_signature": 1,  # by the update's own check
        "unauthorised_signer": 1,  # signed by a key trusted as Tamiyo's, not Simic's
        "unknown_key": 1,  # by the bus, before the payload is parsed
    }
    assert not progress.conservative  # two refusals by the update's own check: below 3
    await simic.close()
    await bus.close()


async def test_an_actor_in_conservative_mode_publishes_nothing(settings: OonaSettings) -> None:
    actor, bus = actor_loop(settings)
    simic = role_bus(settings, "simic")
    for version in (2, 3, 4):  # each refused by the update's own signature check
        await publish_policy_update(
            simic, learner_update(actor.holder, version, KEYS.signer("tamiyo"))
        )
    await actor.listener.consumer.drain()
    assert actor.gate.conservative.active

    progress = await actor.run(asyncio.Event(), episodes=2)

    assert progress.episodes == 2 and progress.withheld_episodes == 2
    assert progress.segments_published == 0 and progress.conservative
    assert await bus.redis.xlen(bus.key(Stream.TRAJECTORIES)) == 0
    await simic.close()
    await bus.close()
