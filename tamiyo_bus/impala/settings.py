"""Settings of the V-trace learner (one frozen dataclass per part, units in the names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from oona.settings import DEFAULT_DATA_DIR
from tamiyo_bus.learning.vtrace import VTraceSettings
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.simic.gate import ValidationGateSettings

IMPALA_GROUP = "impala-learner"
IMPALA_UNROLL_STEPS = 20  # the actors' segment length (ExperienceSettings.segment_max_steps)


@dataclass(frozen=True)
class ImpalaLossSettings:
    """The V-trace loss: its targets' discount and truncations, the weights of the
    value loss and the entropy bonus beside the policy gradient, and where a cut
    segment's bootstrap comes from.

    Both switches are set to what made the learner take off on every data ordering
    measured (docs/learning.md, "Does it learn?"): without either, some orderings of the
    same segments never left the start policy."""

    vtrace: VTraceSettings = field(default_factory=VTraceSettings)
    value_loss_coef: float = 0.5
    entropy_coef: float = 0.01
    # Zero mean, unit spread over each update's real steps, as PPO does: the policy
    # gradient keeps its scale while the rewards (0.01 a decision) and the fresh
    # critic's errors (0.1-0.3) differ by ten times.
    normalize_advantages: bool = True
    # True: a segment cut before its episode ended learns its last step too, bootstrapping
    # from the actor's critic value of the next state (``Trajectory.bootstrap_value``).
    # False: its last step serves as the bootstrap under the learner's own critic and
    # is not learnt from, as for segments that carry no such value.
    behaviour_bootstrap: bool = False

    def __post_init__(self) -> None:
        if self.value_loss_coef < 0 or self.entropy_coef < 0:
            raise ValueError("value_loss_coef and entropy_coef must be >= 0")


@dataclass(frozen=True)
class ImpalaSettings:
    """One V-trace learner process (or one rank of several under torchrun)."""

    data_dir: Path = DEFAULT_DATA_DIR / "impala"
    group: str = IMPALA_GROUP
    consumer: str = "impala-learner-1"  # each process its own (the rank is appended)
    profile: Profile = Profile.SMALL
    seed: int = 0
    loss: ImpalaLossSettings = field(default_factory=ImpalaLossSettings)
    # constant (no warm-up, no decay); at 3e-4 one update moved the fresh policy by a
    # whole nat and one paced run of five on the bus fell below its start (docs/learning.md)
    base_lr: float = 1e-4
    max_grad_norm: float = 0.5
    batch_segments: int = 32  # segments per update (per rank)
    buffer_max_segments: int = 128  # acked, not yet learnt: what a crash loses at most
    updates_per_publish: int = 10  # K: every K updates the weights go to the gate
    checkpoint_every_updates: int = 50  # 0: never
    checkpoint_keep_last: int = 3
    held_out_fraction: float = 0.1  # of segments (by trajectory id), the gate's data
    held_out_max_segments: int = 64  # the most recent held-out segments kept
    # The learner's freshness window on the bus: a backlog up to this old is still read.
    experience_max_age_s: float = 600.0
    refused_retry_s: float = 1.0  # after a refused update (breaker open, paused)
    # Under torchrun, once a rank holds a full batch: how long the ranks wait for the
    # others to fill theirs before each steps on what it holds (docs/learning.md).
    starved_wait_s: float = 5.0
    # Simic's gate, with a KL bound for K V-trace updates rather than one PPO candidate:
    # 10 updates at the default rate moved the policy by 0.1-0.9 nats, and the default
    # 0.1 refused every candidate (docs/learning.md, "Does it learn?").
    gate: ValidationGateSettings = field(default_factory=lambda: ValidationGateSettings(max_kl=1.0))
    checkpoint_directory: Path | None = None  # None: <data_dir>/checkpoints

    def __post_init__(self) -> None:
        if not 1 <= self.batch_segments <= self.buffer_max_segments:
            raise ValueError("need 1 <= batch_segments <= buffer_max_segments")
        if self.updates_per_publish < 1 or self.checkpoint_every_updates < 0:
            raise ValueError("updates_per_publish >= 1 and checkpoint_every_updates >= 0")
        if self.checkpoint_keep_last < 1 or self.held_out_max_segments < 1:
            raise ValueError("checkpoint_keep_last and held_out_max_segments must be >= 1")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError("held_out_fraction must lie in [0, 1)")
        if min(self.experience_max_age_s, self.refused_retry_s, self.base_lr) <= 0:
            raise ValueError("experience_max_age_s, refused_retry_s and base_lr must be > 0")
        if self.starved_wait_s < 0:
            raise ValueError("starved_wait_s must be >= 0")

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint_directory or self.data_dir / "checkpoints"
