"""A learner process for the resume test: learns from a fixed batch of segments
(stdin) forever, checkpointing every 2 updates, and prints each written step."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.impala.checkpoint import learner_state
from tamiyo_bus.impala.distributed import RankInfo
from tamiyo_bus.impala.service import start_learner
from tamiyo_bus.learning.async_checkpoint import AsyncCheckpointer, CheckpointSettings
from tests.impala.helpers import impala_settings

if __name__ == "__main__":
    torch.set_num_threads(1)
    settings = impala_settings(Path(sys.argv[1]), updates_per_publish=1_000)
    segments = []
    for line in sys.stdin.buffer.read().split(b"\n"):
        if line:
            segments.append(pb.Trajectory.FromString(bytes.fromhex(line.decode())))
    learner = start_learner(settings, RankInfo(), torch.device("cpu"), None)
    writer = AsyncCheckpointer(CheckpointSettings(settings.checkpoint_dir, keep_last=2))
    while True:
        learner.update(segments)
        if learner.progress.updates % 2 == 0:
            writer.submit(learner.progress.updates, *learner_state(learner))
            writer.flush(60.0)
            print(learner.progress.updates, flush=True)
