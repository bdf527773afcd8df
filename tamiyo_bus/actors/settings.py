"""Settings of one actor process (one frozen dataclass, units in the names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.risk.gate import RiskSettings
from tamiyo_bus.security.policy_update import PolicyUpdateSettings
from tamiyo_bus.sim.actor import ActorSettings

ACTOR_GROUP_PREFIX = "actor."
"""Each actor reads the policy stream in a group of its own (``actor.<id>``): every
actor must apply every update, as every Tamiyo must."""


@dataclass(frozen=True)
class ActorLoopSettings:
    """One actor process: who it is, what it plays, the policy it starts from, and how
    long it waits for its queued segments to go out before it plays on."""

    actor_id: str = "actor-1"
    # the simulated runs (their seed) and the segments (``experience.segment_max_steps``
    # is the unroll length; ``experience.publish_queue_max_segments`` bounds memory)
    play: ActorSettings = field(default_factory=ActorSettings)
    profile: Profile = Profile.SMALL
    # the start policy's weights: the profile's initial policy drawn from this seed (the
    # learner's start when it uses the same profile and seed)
    policy_seed: int = 0
    # Before an episode, while more than ``backpressure_resume_segments`` segments wait
    # in the publish queue, wait up to ``backpressure_wait_s`` for the learner to catch
    # up; past it, play (a queue past its bound then sheds its oldest, counted).
    backpressure_resume_segments: int = 0
    backpressure_wait_s: float = 30.0
    backpressure_poll_ms: float = 50.0  # how often the wait looks at the queue
    policy_update: PolicyUpdateSettings = field(default_factory=PolicyUpdateSettings)
    # its risk gate: breakers (policy updates, bus IO) and conservative mode
    risk: RiskSettings = field(default_factory=RiskSettings)

    def __post_init__(self) -> None:
        if not self.actor_id:
            raise ValueError("actor_id must be set")
        if self.backpressure_wait_s < 0 or self.backpressure_poll_ms <= 0:
            raise ValueError("need backpressure_wait_s >= 0 and backpressure_poll_ms > 0")
        if self.backpressure_resume_segments < 0:
            raise ValueError("need backpressure_resume_segments >= 0")

    @property
    def policy_group(self) -> str:
        return f"{ACTOR_GROUP_PREFIX}{self.actor_id}"
