"""Asynchronous checkpoints: whole or skipped, latest wins, the last N kept."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from tamiyo_bus.learning.async_checkpoint import (
    AsyncCheckpointer,
    CheckpointSettings,
    load_latest,
    write_checkpoint,
)


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((64, 64), value), "bias": torch.arange(8, dtype=torch.float64)}


def test_a_written_checkpoint_loads_back_with_its_tensors_and_metadata(tmp_path: Path) -> None:
    checkpointer = AsyncCheckpointer(CheckpointSettings(tmp_path))
    checkpointer.submit(7, _state(1.5), {"policy_version": "3"})
    assert checkpointer.close()
    loaded = load_latest(tmp_path)
    assert loaded is not None
    assert loaded.step == 7 and loaded.metadata == {"policy_version": "3"}
    assert torch.equal(loaded.tensors["weight"], torch.full((64, 64), 1.5))
    assert loaded.tensors["bias"].dtype == torch.float64
    assert checkpointer.stats.written == 1 and checkpointer.stats.last_step == 7


def test_the_state_is_copied_at_submission_so_later_training_does_not_leak_in(
    tmp_path: Path,
) -> None:
    checkpointer = AsyncCheckpointer(CheckpointSettings(tmp_path))
    live = _state(1.0)
    checkpointer.submit(1, live, {})
    live["weight"].add_(100.0)
    assert checkpointer.close()
    loaded = load_latest(tmp_path)
    assert loaded is not None and float(loaded.tensors["weight"].max()) == 1.0


def test_while_a_write_is_in_progress_the_newest_submission_replaces_a_waiting_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tamiyo_bus.learning.async_checkpoint as module

    entered, release = threading.Event(), threading.Event()
    real_write = module.write_checkpoint

    def held_write(*args: object, **kwargs: object) -> Path:
        entered.set()
        release.wait()
        return real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "write_checkpoint", held_write)
    checkpointer = AsyncCheckpointer(CheckpointSettings(tmp_path, keep_last=5))
    checkpointer.submit(1, _state(1.0), {})
    assert entered.wait(10)
    for step in (2, 3, 4):
        checkpointer.submit(step, _state(float(step)), {})
    release.set()
    assert checkpointer.close()
    stats = checkpointer.stats
    assert (stats.submitted, stats.written, stats.superseded) == (4, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000001", "step-000000000004"]


def test_only_the_last_n_checkpoints_are_kept(tmp_path: Path) -> None:
    checkpointer = AsyncCheckpointer(CheckpointSettings(tmp_path, keep_last=2))
    for step in range(5):
        checkpointer.submit(step, _state(float(step)), {})
        assert checkpointer.flush(10)
    assert checkpointer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000000003", "step-000000000004"]


@pytest.mark.parametrize("damage", ["truncated tensors", "no manifest", "foreign manifest"])
def test_a_torn_newest_checkpoint_is_skipped_for_the_one_before(
    tmp_path: Path, damage: str
) -> None:
    write_checkpoint(tmp_path, 1, _state(1.0), {"n": "1"})
    newest = write_checkpoint(tmp_path, 2, _state(2.0), {"n": "2"})
    if damage == "truncated tensors":
        state = newest / "state.safetensors"
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "no manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "manifest.json").write_text(json.dumps({"format": "other", "step": 2}))
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.step == 1 and loaded.metadata == {"n": "1"}


def test_a_directory_left_by_a_writer_that_died_is_not_a_checkpoint(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 1, _state(1.0), {})
    leftover = tmp_path / ".writing-000000000002-1-1"
    leftover.mkdir()
    (leftover / "state.safetensors").write_bytes(b"partial")
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.step == 1
    checkpointer = AsyncCheckpointer(CheckpointSettings(tmp_path))
    checkpointer.submit(3, _state(3.0), {})
    assert checkpointer.close()
    assert not leftover.exists()


def test_no_checkpoint_at_all_is_none(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    assert load_latest(tmp_path / "absent") is None


def test_a_failed_write_is_counted_and_leaves_the_earlier_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tamiyo_bus.learning.async_checkpoint as module

    checkpointer = AsyncCheckpointer(CheckpointSettings(tmp_path))
    checkpointer.submit(1, _state(1.0), {})
    assert checkpointer.flush(10)

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "_write_synced", disk_full)
    checkpointer.submit(2, _state(2.0), {})
    assert checkpointer.close()
    assert (checkpointer.stats.written, checkpointer.stats.failed) == (1, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000000001"]
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.step == 1
