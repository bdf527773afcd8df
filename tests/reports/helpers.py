"""Builders of commands and states, fast report settings, and bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.reports.book import RetryPolicy
from tamiyo_bus.reports.reporter import ReportSettings
from tamiyo_bus.reports.wal import WalSettings
from tamiyo_bus.reports.windows import (
    MODEL_PARAMETERS_METRIC,
    SEED_PARAMETERS_METRIC,
    WindowSettings,
)

RUN = "run-1"


def command(
    index: int,
    *,
    run: str = RUN,
    seed: str = "seed-1",
    blueprint: str = "bp-conv",
    command_type: pb.CommandType.ValueType = pb.COMMAND_TYPE_SEED,
    policy_version: int = 7,
) -> pb.AdaptationCommand:
    cmd = pb.AdaptationCommand(
        command_id=f"cmd-{index:06d}",
        command_type=command_type,
        target_seed_id=seed,
        training_run_id=run,
        policy_version=policy_version,
    )
    if command_type == pb.COMMAND_TYPE_SEED:
        cmd.seed.operation = pb.SEED_OP_GERMINATE
        cmd.seed.blueprint_id = blueprint
    return cmd


def state(
    epoch: int,
    *,
    run: str = RUN,
    loss: float = 1.0,
    accuracy: float = 0.5,
    seeds: dict[str, tuple[pb.SeedLifecycleStage.ValueType, float]] | None = None,
    model_parameters: float = 1_000_000.0,
) -> pb.SystemStatePacket:
    packet = pb.SystemStatePacket(
        training_run_id=run,
        current_epoch=epoch,
        validation_loss=loss,
        validation_accuracy=accuracy,
        training_metrics={MODEL_PARAMETERS_METRIC: model_parameters},
    )
    for seed_id, (stage, params) in (seeds or {}).items():
        packet.seed_states.add(
            seed_id=seed_id, stage=stage, metrics={SEED_PARAMETERS_METRIC: params}
        )
    return packet


def fast_settings(wal_dir: Path, **overrides: object) -> ReportSettings:
    """Small windows, quick retries and polls, no retention: every path in ms."""
    base: dict[str, object] = {
        "wal_dir": wal_dir,
        "windows": WindowSettings(window_epochs=2),
        "wal": WalSettings(segment_max_bytes=64 * 1024),
        "retry": RetryPolicy(ack_timeout_ms=200.0, retry_backoff_max_ms=800.0, max_attempts=4),
        "retention_s": 0.0,
        "compaction_interval_s": 3_600.0,
        "control_poll_interval_ms": 10.0,
    }
    base.update(overrides)
    return ReportSettings(**base)  # type: ignore[arg-type]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Re-check a condition with a short backoff until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


async def async_wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
