"""Simic's PPO learner leaves actors' rewarded segments to the V-trace learner: its
intake acks and counts them and stores none of their decisions, while a Tamiyo's
segments on the same stream are stored as before."""

from __future__ import annotations

from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.simic.intake import ExperienceIntake
from tamiyo_bus.simic.store import ExperienceStore
from tests.impala.helpers import actor_segments
from weatherlight.role_keys import RoleKeys

from .helpers import initial_policy, simulated

KEYS = RoleKeys.generate()


async def test_rewarded_segments_are_acked_and_not_stored(
    settings: OonaSettings, tmp_path: Path
) -> None:
    tamiyo = Bus(open_redis(settings.redis_url, settings), settings, KEYS.signer("tamiyo"),
                 source="tamiyo")  # fmt: skip
    rewarded = [s for s in actor_segments(initial_policy(), runs=2) if s.steps]
    fielded = [s for s in simulated(initial_policy(), runs=1).segments if s.steps][:1]
    for segment in [*rewarded, *fielded]:
        await tamiyo.publish(pb.MESSAGE_TYPE_TRAJECTORY, segment.SerializeToString(),
                             stream=Stream.TRAJECTORIES)  # fmt: skip
    store = ExperienceStore(tmp_path / "experience.sqlite3")
    intake = ExperienceIntake(
        Bus(open_redis(settings.redis_url, settings), settings, KEYS.signer("simic"),
            source="simic"),
        KEYS.keyring, store, group="simic-learner", consumer="learner-1",
        held_out_fraction=0.1, max_age_ms=60_000.0,
    )  # fmt: skip

    await intake.drain()

    assert intake.metrics.count("learner_rewarded_segments_skipped") == len(rewarded)
    assert store.counts()["decisions_stored"] == len(fielded[0].steps)
    assert intake.consumer.metrics.count("rejected", stream=Stream.TRAJECTORIES) == 0
    store.close()
    for bus in (tamiyo, intake.consumer.bus):
        await bus.close()
