"""The bounds that pace actors to their learner reach the actor process: the
trajectories stream's cap from the environment, the publish queue and the backpressure
rule from their flags."""

from __future__ import annotations

from oona.streams import Stream
from weatherlight.actor_cli import settings_from
from weatherlight.cli import build_parser
from weatherlight.settings import ENV_TRAJECTORIES_MAX_ENTRIES, SystemSettings


def test_the_trajectories_cap_comes_from_the_environment_and_leaves_other_streams_alone() -> None:
    default = SystemSettings.from_env({}).oona
    capped = SystemSettings.from_env({ENV_TRAJECTORIES_MAX_ENTRIES: "16"}).oona
    assert default.cap_for(Stream.TRAJECTORIES) == 1_024
    assert capped.cap_for(Stream.TRAJECTORIES) == 16
    assert capped.cap_for(Stream.FIELD_REPORTS) == default.cap_for(Stream.FIELD_REPORTS)


def test_the_actor_queue_comes_from_its_flag() -> None:
    parser = build_parser()
    default = settings_from(parser.parse_args(["actor"]))
    paced = settings_from(parser.parse_args(["actor", "--queue-segments", "24"]))
    assert default.play.experience.publish_queue_max_segments == 256
    assert paced.play.experience.publish_queue_max_segments == 24


def test_the_backpressure_rule_comes_from_its_flags() -> None:
    parser = build_parser()
    default = settings_from(parser.parse_args(["actor"]))
    ahead = settings_from(
        parser.parse_args(
            ["actor", "--backpressure-resume-segments", "8", "--backpressure-wait-s", "2.5"]
        )
    )
    assert (default.backpressure_resume_segments, default.backpressure_wait_s) == (0, 30.0)
    assert (ahead.backpressure_resume_segments, ahead.backpressure_wait_s) == (8, 2.5)
