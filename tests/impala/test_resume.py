"""A learner process killed (SIGKILL) mid-run resumes from its latest checkpoint with
that checkpoint's weights, moments and counters, and goes on learning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tamiyo_bus.impala.distributed import RankInfo
from tamiyo_bus.impala.service import start_learner
from tamiyo_bus.learning.async_checkpoint import load_latest

from .helpers import actor_segments, impala_settings, initial_policy

ROOT = Path(__file__).resolve().parents[2]


def test_a_killed_learner_resumes_from_its_checkpoint_and_learns_on(tmp_path: Path) -> None:
    segments = actor_segments(initial_policy(), runs=4)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.impala.learner_process", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"\n".join(s.SerializeToString().hex().encode() for s in segments))
    child.stdin.close()
    assert [int(child.stdout.readline()) for _ in range(2)] == [2, 4]
    child.send_signal(signal.SIGKILL)
    child.wait()

    saved = load_latest(impala_settings(tmp_path).checkpoint_dir)
    assert saved is not None and saved.step >= 4
    settings = impala_settings(tmp_path, updates_per_publish=1_000)
    learner = start_learner(settings, RankInfo(), torch.device("cpu"), None)
    assert learner.progress.updates == saved.step
    for name, weights in learner.policy.state_dict().items():
        torch.testing.assert_close(weights, saved.tensors[f"policy.{name}"], rtol=0, atol=0)
    assert len(learner.optimizer.state) > 0  # Adam's moments came back too
    before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    assert learner.update(segments).transitions > 0
    assert learner.progress.updates == saved.step + 1
    assert any(not torch.equal(before[k], v) for k, v in learner.policy.state_dict().items())
