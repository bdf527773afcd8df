"""Settings of Simic's learner service (one frozen dataclass, units in the names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from oona.settings import DEFAULT_DATA_DIR
from tamiyo_bus.learning.gae import GAESettings
from tamiyo_bus.learning.ppo import PPOSettings
from tamiyo_bus.learning.replay import (
    ReplaySettings,
    ReplayStorageSettings,
    ReplayWriterSettings,
)
from tamiyo_bus.learning.reward import RewardSettings
from tamiyo_bus.learning.trainer import TRAINER_PPO
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.simic.gate import ValidationGateSettings

LEARNER_GROUP = "simic-learner"


def learner_replay() -> ReplaySettings:
    """20,000 decisions (about 58 MB at the reference size); expiry by policy lag and
    wall-clock age only, since the decision steps of different runs do not compare."""
    return ReplaySettings(
        storage=ReplayStorageSettings(capacity_transitions=20_000),
        writer=ReplayWriterSettings(max_age_steps=None),
    )


@dataclass(frozen=True)
class LearnerSettings:
    """Simic's learner: where it keeps its state, how it joins experience with field
    reports, how much it learns from at once and when it proposes a candidate."""

    data_dir: Path = DEFAULT_DATA_DIR / "simic" / "learner"
    group: str = LEARNER_GROUP
    consumer: str = "simic-learner-1"
    # Simic's private key when the learner runs inside Weatherlight (whose own key may
    # not sign policies); the standalone command signs with its process's key.
    signing_key_file: Path | None = None
    # Start weights (a policy checkpoint); None: the profile's initial policy from `seed`.
    start_checkpoint: Path | None = None
    profile: Profile = Profile.SMALL
    seed: int = 0
    # An acted decision without its field report after this long expires (and so does
    # a report whose decision never came).
    report_wait_s: float = 600.0
    # A decision whose successor (or run end) never came expires after this long.
    successor_wait_s: float = 3_600.0
    # The learner's freshness window on the bus: a backlog up to this old is still read.
    experience_max_age_s: float = 3_600.0
    retain_s: float = 86_400.0  # joined or expired rows are kept this long, then pruned
    batch_min_decisions: int = 256  # fresh trainable decisions before an update
    batch_max_decisions: int = 1_024
    replay_sample_decisions: int = 256  # drawn from the replay into every update (0: none)
    updates_per_candidate: int = 4
    held_out_fraction: float = 0.1  # of command ids, never trained on (the gate's data)
    held_out_max_decisions: int = 1_024  # the most recent held-out decisions the gate reads
    learn_interval_s: float = 1.0
    replay_save_every_updates: int = 20
    base_lr: float = 3e-4  # constant (no warm-up, no decay)
    reward: RewardSettings = field(default_factory=RewardSettings)
    gae: GAESettings = field(default_factory=GAESettings)
    ppo: PPOSettings = field(default_factory=lambda: TRAINER_PPO)
    replay: ReplaySettings = field(default_factory=learner_replay)
    gate: ValidationGateSettings = field(default_factory=ValidationGateSettings)

    def __post_init__(self) -> None:
        if not 0 < self.batch_min_decisions <= self.batch_max_decisions:
            raise ValueError("need 0 < batch_min_decisions <= batch_max_decisions")
        if self.updates_per_candidate < 1 or self.replay_sample_decisions < 0:
            raise ValueError("updates_per_candidate >= 1 and replay_sample_decisions >= 0")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError("held_out_fraction must lie in [0, 1)")
        waits = (self.report_wait_s, self.successor_wait_s, self.learn_interval_s)
        if min(waits) <= 0 or self.retain_s <= max(self.report_wait_s, self.successor_wait_s):
            raise ValueError("waits must be > 0 and retain_s must outlast them")

    @property
    def store_path(self) -> Path:
        return self.data_dir / "experience.sqlite3"

    @property
    def checkpoint_path(self) -> Path:
        return self.data_dir / "learner.safetensors"

    @property
    def replay_path(self) -> Path:
        return self.data_dir / "replay.safetensors"
