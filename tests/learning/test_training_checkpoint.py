"""Training checkpoints: a policy checkpoint Tamiyo loads as any other, that also holds
the optimiser's state, the settings and the progress, and resumes a run exactly."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tamiyo_bus.learning.trainer import PPOTrainer, TrainerSettings, TrainingStats
from tamiyo_bus.learning.training_checkpoint import (
    load_optimizer_state,
    optimizer_state,
    restore_trainer,
    save_trainer,
)
from tamiyo_bus.policy.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_info,
    save_checkpoint,
    training_state,
)
from tamiyo_bus.policy.profiles import PROFILES
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim import SimSettings

SETTINGS = TrainerSettings(runs_per_rollout=2, sim=SimSettings(epochs=1), seed=3)


@dataclass(frozen=True)
class Saved:
    """A training checkpointed after one update, and the update that followed it."""

    path: Path
    weights: dict[str, torch.Tensor]  # the policy's when it was saved
    normalizer_counts: list[float]
    continued: TrainingStats
    final: PPOTrainer


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    path = tmp_path_factory.mktemp("training") / "checkpoint.safetensors"
    trainer = PPOTrainer(SETTINGS)
    trainer.iterate()
    save_trainer(path, trainer)
    weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    counts = trainer.normalizer.snapshot.count["global"].tolist()
    return Saved(path, weights, counts, trainer.iterate(), trainer)


def test_a_resumed_run_continues_exactly_where_it_stopped(saved: Saved) -> None:
    assert not list(saved.path.parent.glob("*.tmp"))  # written beside, then renamed
    resumed = PPOTrainer(SETTINGS)
    restore_trainer(resumed, saved.path.read_bytes())
    assert (resumed.updates, resumed.warmed_up) == (1, True)
    again, continued = resumed.iterate(), saved.continued
    assert again.mean_episode_return == continued.mean_episode_return
    assert dataclasses.replace(again.ppo, duration_s=0.0) == dataclasses.replace(
        continued.ppo, duration_s=0.0
    )
    assert (again.update, again.env_steps, again.decisions) == (
        continued.update,
        continued.env_steps,
        continued.decisions,
    )
    for a, b in zip(saved.final.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tamiyo_loads_a_training_checkpoint_as_a_policy(saved: Saved) -> None:
    info = read_info(saved.path)
    assert (info.policy_id, info.policy_version) == ("ppo-sim-3", 2)
    serving = ServingPolicy(PROFILES[SETTINGS.profile])
    _, snapshot = load_checkpoint(saved.path, serving)
    for name, tensor in saved.weights.items():
        assert torch.equal(serving.state_dict()[name], tensor), name
    assert snapshot.count["global"].tolist() == saved.normalizer_counts
    state = training_state(saved.path.read_bytes())
    assert json.loads(state.metadata["config"])["seed"] == 3
    assert json.loads(state.metadata["progress"])["updates"] == 1
    assert any(name.startswith("optimizer.state.") for name in state.tensors)


def test_a_plain_policy_checkpoint_carries_no_training_state(tmp_path: Path) -> None:
    path = tmp_path / "policy.safetensors"
    trainer = PPOTrainer(SETTINGS)
    save_checkpoint(
        path, trainer.policy, trainer.normalizer.snapshot, policy_id="p", policy_version=1
    )
    saved = training_state(path.read_bytes())
    assert (dict(saved.tensors), dict(saved.metadata)) == ({}, {})
    with pytest.raises(CheckpointMismatchError, match="without a trainer's state"):
        restore_trainer(trainer, path.read_bytes())


def test_a_checkpoint_of_other_settings_is_refused(saved: Saved) -> None:
    other = PPOTrainer(dataclasses.replace(SETTINGS, reward_scale=2.0))
    with pytest.raises(CheckpointMismatchError, match="reward_scale"):
        restore_trainer(other, saved.path.read_bytes())


def test_the_optimiser_state_round_trips() -> None:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    adam = torch.optim.Adam(weights, lr=0.01, fused=True)
    for _ in range(3):
        adam.zero_grad()
        sum((w**2).sum() for w in weights).backward()  # type: ignore[union-attr]
        adam.step()
    copy = torch.optim.Adam(
        [torch.nn.Parameter(w.detach().clone()) for w in weights], lr=0.5, fused=True
    )
    load_optimizer_state(copy, optimizer_state(adam))
    original, restored = adam.state_dict(), copy.state_dict()
    assert original["param_groups"] == restored["param_groups"]
    for index, state in original["state"].items():
        for name, value in state.items():
            assert torch.equal(value, restored["state"][index][name]), (index, name)
