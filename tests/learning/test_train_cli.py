"""`tamiyo-bus train --env sim` trains, writes the checkpoint,
the per-update log and the learning curve, says where they are, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tamiyo_bus.policy.checkpoint import load_checkpoint, read_info
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.serving import ServingPolicy
from weatherlight.cli import main
from weatherlight.training.cli import CHECKPOINT, CURVE, EXIT_UNAVAILABLE, UPDATES

TINY = ["--runs", "2", "--epochs", "1", "--threads", "1"]


def test_training_writes_checkpoint_log_and_curve_and_resumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = tmp_path / "first"
    argv = ["train", "--env", "sim", *TINY, "--updates", "2", "--checkpoint-every", "1"]
    assert main([*argv, "--out", str(first)]) == 0
    printed = capsys.readouterr().out
    (run_dir,) = first.iterdir()
    for name in (CHECKPOINT, CURVE, UPDATES):
        assert f"{run_dir / name}" in printed
    assert "update 2 [" in printed
    lines = [json.loads(line) for line in (run_dir / UPDATES).read_text().splitlines()]
    assert [line["update"] for line in lines] == [1, 2]
    assert {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"} <= set(
        lines[0]["ppo"]
    )
    curve = (run_dir / CURVE).read_text()
    assert curve.startswith("<svg") and "<polyline" in curve and "<style>" in curve
    assert read_info(run_dir / CHECKPOINT).policy_version == 3
    load_checkpoint(run_dir / CHECKPOINT, ServingPolicy(PROFILES[Profile.SMALL]))

    second = tmp_path / "second"
    resume = ["--resume", str(run_dir / CHECKPOINT), "--updates", "1", "--out", str(second)]
    assert main(["train", "--env", "sim", *TINY, *resume]) == 0
    (resumed_dir,) = second.iterdir()
    (line,) = (resumed_dir / UPDATES).read_text().splitlines()
    assert json.loads(line)["update"] == 3
    assert read_info(resumed_dir / CHECKPOINT).policy_version == 4


def test_resuming_under_other_settings_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["train", "--env", "sim", *TINY, "--updates", "1", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "a").iterdir()
    other = ["--seed", "5", "--resume", str(run_dir / CHECKPOINT), "--out", str(tmp_path / "b")]
    assert main([*argv[:-2], *other]) == EXIT_UNAVAILABLE
    assert "other settings" in capsys.readouterr().err
