"""What a V-trace learner checkpoints, and how it comes back (no IO: the asynchronous
checkpointer writes it, ``learning.async_checkpoint``).

The tensors: the weights being trained (``policy.``), the running weights last
published (``running.``) and Adam's moments (``optimizer.``); the metadata: the
optimiser's scalars and groups, the LR controller, and the learner's counters with
its policy versions. The stream cursor is not here: the consumer group is the cursor
(what was acked is not read again).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import torch

from tamiyo_bus.impala.learner import ImpalaLearner, ImpalaProgress
from tamiyo_bus.learning.async_checkpoint import SavedCheckpoint
from tamiyo_bus.learning.training_checkpoint import load_optimizer_state, optimizer_state
from tamiyo_bus.policy.checkpoint import TrainingState

_POLICY = "policy."
_RUNNING = "running."
_OPTIMIZER = "optimizer."


def learner_state(learner: ImpalaLearner) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    optimizer = optimizer_state(learner.optimizer)
    tensors = {
        **{_POLICY + k: v for k, v in learner.policy.state_dict().items()},
        **{_RUNNING + k: v for k, v in learner.running.state_dict().items()},
        **{_OPTIMIZER + k: v for k, v in optimizer.tensors.items()},
    }
    metadata = {
        **optimizer.metadata,
        "progress": json.dumps(dataclasses.asdict(learner.progress)),
        "lr": json.dumps({"step": learner.lr.step, "tamiyo_scale": learner.lr.tamiyo_scale}),
    }
    return tensors, metadata


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def restore_learner(learner: ImpalaLearner, saved: SavedCheckpoint) -> None:
    """Continue from ``saved`` (the weights, moments, rate and counters it holds)."""
    learner.policy.load_state_dict(_prefixed(saved.tensors, _POLICY))
    learner.running.load_state_dict(_prefixed(saved.tensors, _RUNNING))
    load_optimizer_state(
        learner.optimizer,
        TrainingState(
            _prefixed(saved.tensors, _OPTIMIZER), {"optimizer": saved.metadata["optimizer"]}
        ),
    )
    learner.progress = ImpalaProgress(**json.loads(saved.metadata["progress"]))
    lr = json.loads(saved.metadata["lr"])
    learner.lr.step = lr["step"]
    learner.lr.tamiyo_scale = lr["tamiyo_scale"]
