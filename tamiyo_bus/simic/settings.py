"""Settings of Simic's learner service (one frozen dataclass, units in the names)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    # An acted decision still without its report this long after its run ended was
    # refused by Kasmina (no window, no report): joined as one that changed nothing.
    refused_after_end_s: float = 60.0
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


def short_run_learner(base: LearnerSettings) -> LearnerSettings:
    """``base`` sized for short training runs (the demo's host: about 80 decisions a
    run of 60 epochs): an update from every 64 fresh decisions and a candidate from
    each, a fifth of the decisions held out, the gate judging from 16 of them and
    letting a candidate move up to 0.3 nats from the running policy (one update from a
    fresh policy measured 0.18-0.24; 0.1 refused every candidate of a 24-run training
    while the gate's simulated runs rated them better, 2.11 against 1.57); a command
    still without its report 5 s after its run ended counts as refused."""
    return replace(
        base,
        batch_min_decisions=64,
        replay_sample_decisions=64,
        updates_per_candidate=1,
        held_out_fraction=0.2,
        learn_interval_s=0.5,
        refused_after_end_s=5.0,
        gate=replace(base.gate, min_held_out_decisions=16, max_kl=0.3),
    )
