"""Shared pieces of the actor tests: a short simulated episode, the test's small policy,
buses signing as a role, and the PolicyUpdates a learner (or a forger) publishes."""

from __future__ import annotations

from dataclasses import replace

import torch

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.connection import open_redis
from oona.keys import Signer
from oona.settings import OonaSettings
from tamiyo_bus.actors.loop import ActorLoop
from tamiyo_bus.actors.settings import ActorLoopSettings
from tamiyo_bus.experience.segments import ExperienceSettings
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyHolder, build_policy_update
from tamiyo_bus.sim.actor import ActorSettings
from tamiyo_bus.sim.settings import SimSettings
from tests.policy.helpers import SMALL, holder_for
from weatherlight.role_keys import RoleKeys

KEYS = RoleKeys.generate()
# Two runs of ten decisions an episode, in segments of at most four: about eight
# segments an episode, a tenth of a second to play.
SHORT = ActorLoopSettings(
    actor_id="actor-1",
    play=ActorSettings(
        runs=2,
        seed=3,
        sim=SimSettings(epochs=2, steps_per_epoch=20, decision_every_steps=4),
        experience=ExperienceSettings(
            segment_max_steps=4, publish_retry_base_ms=20.0, publish_retry_max_ms=100.0
        ),
    ),
    backpressure_poll_ms=10.0,
)


def role_bus(settings: OonaSettings, role: str, signer: Signer | None = None) -> Bus:
    redis = open_redis(settings.redis_url, settings)
    return Bus(redis, settings, signer or KEYS.signer(role), source=role)


def small_holder() -> PolicyHolder:
    torch.manual_seed(0)
    return holder_for(ServingPolicy(SMALL), version=0)


def actor_loop(
    settings: OonaSettings, loop_settings: ActorLoopSettings = SHORT
) -> tuple[ActorLoop, Bus]:
    """An actor signing as Tamiyo, trusting the deployment's keys as their roles."""
    bus = role_bus(settings, "tamiyo")
    return ActorLoop(bus, KEYS.keyring, loop_settings, holder=small_holder()), bus


def learner_update(holder: PolicyHolder, version: int, signer: Signer) -> pb.PolicyUpdate:
    """New weights for ``holder``'s policy, signed by ``signer``."""
    torch.manual_seed(version)
    running = holder.current()
    return build_policy_update(
        ServingPolicy(SMALL).state_dict(), policy_id="impala", version=version,
        architecture_id=running.architecture_id, registry_digest=running.registry_digest,
        signer=signer,
    )  # fmt: skip


def with_queue(loop_settings: ActorLoopSettings, max_segments: int) -> ActorLoopSettings:
    experience = replace(loop_settings.play.experience, publish_queue_max_segments=max_segments)
    return replace(loop_settings, play=replace(loop_settings.play, experience=experience))
