"""A trainer's checkpoint: the policy checkpoint plus what resuming needs.

One safetensors file in the policy checkpoint's format (``policy.checkpoint``), so
Tamiyo loads it as it loads any policy; beside the weights and the feature statistics,
under the ``training.`` prefix: the optimiser's per-parameter tensors, and as JSON
metadata its scalars and parameter groups, the trainer's settings, its progress and
LR controller, and the states of its random streams (the simulator's, the sampler's,
the minibatch shuffler's). Restoring all of it continues a run exactly where it
stopped. No pickle anywhere: loading reads tensors and JSON, and executes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from tamiyo_bus.learning.trainer import PPOTrainer, TrainerSettings
from tamiyo_bus.policy.checkpoint import (
    CheckpointMismatchError,
    TrainingState,
    load_checkpoint_bytes,
    save_checkpoint,
    training_state,
)

POLICY_ID = "ppo-sim"
_STATE = "optimizer.state."
_SAMPLER = "generator.sampler"
_SHUFFLER = "generator.shuffler"


def settings_json(settings: TrainerSettings) -> str:
    """The settings as canonical JSON (enums by value, tuples as lists)."""
    return json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)


def optimizer_state(optimizer: torch.optim.Optimizer) -> TrainingState:
    """An optimiser's state dict as named tensors plus JSON for everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_STATE}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = json.dumps({"param_groups": state["param_groups"], "scalars": scalars})
    return TrainingState(tensors, {"optimizer": groups})


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: TrainingState) -> None:
    """Inverse of :func:`optimizer_state`."""
    stored = json.loads(saved.metadata["optimizer"])
    per_parameter: dict[int, dict[str, Any]] = {
        int(index): dict(values) for index, values in stored["scalars"].items()
    }
    for key, tensor in saved.tensors.items():
        if key.startswith(_STATE):
            index, name = key.removeprefix(_STATE).split(".", 1)
            per_parameter.setdefault(int(index), {})[name] = tensor
    # JSON turned tuples (Adam's betas) into lists; the parameter indices stay a list.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in stored["param_groups"]
    ]
    optimizer.load_state_dict({"state": per_parameter, "param_groups": groups})


def _trainer_state(trainer: PPOTrainer) -> TrainingState:
    optimizer = optimizer_state(trainer.learner.optimizer)
    generator = trainer.learner.generator or torch.Generator()
    progress = {
        "updates": trainer.updates,
        "env_steps": trainer.env_steps,
        "decisions": trainer.decisions,
        "warmed_up": trainer.warmed_up,
        "lr_step": trainer.lr.step,
        "lr_tamiyo_scale": trainer.lr.tamiyo_scale,
        "sim_episode": trainer.sim.episode,
        "sim_rng": trainer.sim.rng.bit_generator.state,
    }
    return TrainingState(
        {
            **optimizer.tensors,
            _SAMPLER: trainer.generator.get_state(),
            _SHUFFLER: generator.get_state(),
        },
        {
            **optimizer.metadata,
            "config": settings_json(trainer.settings),
            "progress": json.dumps(progress),
        },
    )


def save_trainer(path: Path, trainer: PPOTrainer) -> None:
    """Write the trainer's checkpoint atomically (temporary file, then rename)."""
    save_checkpoint(
        path,
        trainer.policy,
        trainer.normalizer.snapshot,
        policy_id=f"{POLICY_ID}-{trainer.settings.seed}",
        policy_version=trainer.updates + 1,
        training=_trainer_state(trainer),
    )


def restore_trainer(trainer: PPOTrainer, data: bytes) -> None:
    """Continue from checkpoint ``data``; refuses one made under other settings."""
    saved = training_state(data)
    if "config" not in saved.metadata:
        raise CheckpointMismatchError("a policy checkpoint without a trainer's state")
    expected = json.loads(settings_json(trainer.settings))
    found = json.loads(saved.metadata["config"])
    differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if differing:
        raise CheckpointMismatchError(f"checkpoint made under other settings: {differing}")
    _, snapshot = load_checkpoint_bytes(data, trainer.policy)
    trainer.normalizer.load(snapshot)
    trainer.actor.load_state_dict(trainer.policy.state_dict())
    load_optimizer_state(trainer.learner.optimizer, saved)
    progress = json.loads(saved.metadata["progress"])
    trainer.updates = progress["updates"]
    trainer.env_steps = progress["env_steps"]
    trainer.decisions = progress["decisions"]
    trainer.warmed_up = progress["warmed_up"]
    # The optimiser's restored groups already carry the rate these give.
    trainer.lr.step = progress["lr_step"]
    trainer.lr.tamiyo_scale = progress["lr_tamiyo_scale"]
    trainer.sim.episode = progress["sim_episode"]
    trainer.sim.rng.bit_generator.state = progress["sim_rng"]
    trainer.generator.set_state(saved.tensors[_SAMPLER])
    if trainer.learner.generator is not None:
        trainer.learner.generator.set_state(saved.tensors[_SHUFFLER])
