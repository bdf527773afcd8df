"""The learner's state on disk: one policy checkpoint, written atomically.

The file is a policy checkpoint (``policy.checkpoint``: the learner's weights and the
feature statistics its simulated evaluation uses), so Tamiyo could load it as it is;
under the ``training.`` prefix it also holds the Adam moments, the running policy's
weights (what candidates are judged against) and, as JSON, the progress: updates and
batches done, the last version recorded for publishing and the last the bus took, the
highest version seen in experience, candidates published, rejected and deferred, and
the LR controller's step. No pickle: loading reads tensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tamiyo_bus.learning.training_checkpoint import load_optimizer_state, optimizer_state
from tamiyo_bus.policy.checkpoint import (
    CheckpointMismatchError,
    TrainingState,
    load_checkpoint_bytes,
    save_checkpoint,
    training_state,
)
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.reference import ReferencePolicy

_RUNNING = "running."
_PROGRESS = "learner_progress"


@dataclass
class LearnerProgress:
    updates: int = 0
    batches: int = 0  # the serial of the last batch the weights have learnt from
    running_version: int = 0  # the version of the policy candidates are judged against
    published_version: int = 0  # recorded before publishing
    delivered_version: int = 0  # the bus took it
    seen_version: int = 0
    candidates_published: int = 0
    candidates_rejected: int = 0
    rejected_in_row: int = 0  # since the last candidate published
    candidates_deferred: int = 0
    lr_step: int = 0


def save_learner_state(
    path: Path,
    *,
    policy: ReferencePolicy,
    running: ReferencePolicy,
    optimizer: torch.optim.Optimizer,
    normalizer: NormalizerSnapshot,
    progress: LearnerProgress,
    policy_id: str,
) -> None:
    optimizer_part = optimizer_state(optimizer)
    running_weights = {_RUNNING + k: v for k, v in running.state_dict().items()}
    save_checkpoint(
        path,
        policy,
        normalizer,
        policy_id=policy_id,
        policy_version=progress.running_version,
        training=TrainingState(
            {**optimizer_part.tensors, **running_weights},
            {**optimizer_part.metadata, _PROGRESS: json.dumps(dataclasses.asdict(progress))},
        ),
    )


def load_learner_state(
    data: bytes,
    *,
    policy: ReferencePolicy,
    running: ReferencePolicy,
    optimizer: torch.optim.Optimizer,
) -> tuple[LearnerProgress, NormalizerSnapshot]:
    """Restore weights, running weights and optimiser from ``data``; refuses a
    checkpoint without a learner's state, or of another architecture."""
    saved = training_state(data)
    if _PROGRESS not in saved.metadata:
        raise CheckpointMismatchError("a checkpoint without the learner's state")
    _, normalizer = load_checkpoint_bytes(data, policy)
    n = len(_RUNNING)
    running.load_state_dict(
        {k[n:]: v for k, v in saved.tensors.items() if k.startswith(_RUNNING)}, strict=True
    )
    load_optimizer_state(optimizer, saved)
    progress = LearnerProgress(**json.loads(saved.metadata[_PROGRESS]))
    return progress, normalizer
