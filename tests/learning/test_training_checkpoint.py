"""Training checkpoints: a policy checkpoint Tamiyo loads as any other, that also holds
the optimiser's state, the settings and the progress, and resumes a run exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tamiyo_bus.learning.trainer import PPOTrainer, TrainerSettings
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


def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    original = PPOTrainer(SETTINGS)
    original.iterate()
    save_trainer(path, original)
    assert not list(tmp_path.glob("*.tmp"))  # written beside, then renamed
    continued = original.iterate()

    resumed = PPOTrainer(SETTINGS)
    restore_trainer(resumed, path.read_bytes())
    assert (resumed.updates, resumed.warmed_up) == (1, True)
    again = resumed.iterate()
    assert again.mean_episode_return == continued.mean_episode_return
    assert dataclasses.replace(again.ppo, duration_s=0.0) == dataclasses.replace(
        continued.ppo, duration_s=0.0
    )
    assert (again.update, again.env_steps, again.decisions) == (
        continued.update,
        continued.env_steps,
        continued.decisions,
    )
    for a, b in zip(original.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tamiyo_loads_a_training_checkpoint_as_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    trainer = PPOTrainer(SETTINGS)
    trainer.iterate()
    save_trainer(path, trainer)
    info = read_info(path)
    assert (info.policy_id, info.policy_version) == ("ppo-sim-3", 2)
    serving = ServingPolicy(PROFILES[SETTINGS.profile])
    _, snapshot = load_checkpoint(path, serving)
    for name, tensor in trainer.policy.state_dict().items():
        assert torch.equal(serving.state_dict()[name], tensor), name
    assert snapshot.count["global"].tolist() == trainer.normalizer.snapshot.count["global"].tolist()
    saved = training_state(path.read_bytes())
    assert json.loads(saved.metadata["config"])["seed"] == 3
    assert json.loads(saved.metadata["progress"])["updates"] == 1
    assert any(name.startswith("optimizer.state.") for name in saved.tensors)


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


def test_a_checkpoint_of_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_trainer(path, PPOTrainer(SETTINGS))
    other = PPOTrainer(dataclasses.replace(SETTINGS, reward_scale=2.0))
    with pytest.raises(CheckpointMismatchError, match="reward_scale"):
        restore_trainer(other, path.read_bytes())


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
