"""A synthetic training run that drives a FieldReporter and delivers its reports.

The crash tests run it as a process and SIGKILL it mid-run; the benchmark uses it for
end-to-end figures. It is deterministic: the same plan issues the same commands
(same command ids, so the same report ids) at the same epochs, so a restarted drill
re-sends what the killed one had sent, as a restarted trainer would, and the reporter
recognises what it already holds.

Run as ``python -m tests.reports.drill --wal-dir DIR --redis-url URL --prefix P``
with the keys in the environment (TAMIYO_SIGNING_KEY, TAMIYO_TRUSTED_KEYS; see
oona.keyfiles). It exits 0 once every report of the plan is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import ROLES
from oona.bus import Bus
from oona.connection import open_redis
from oona.keyfiles import KeySettings
from oona.settings import OonaSettings
from tamiyo_bus.reports.book import ReportState, RetryPolicy
from tamiyo_bus.reports.delivery import DeliverySettings, ReportDelivery
from tamiyo_bus.reports.reporter import FieldReporter, ReportSettings
from tamiyo_bus.reports.windows import (
    MODEL_PARAMETERS_METRIC,
    SEED_PARAMETERS_METRIC,
    WindowSettings,
    report_id_for,
)


@dataclass(frozen=True)
class DrillPlan:
    """`decisions_per_epoch` acting decisions in each of `epochs` epochs."""

    training_run_id: str = "drill"
    epochs: int = 10
    decisions_per_epoch: int = 10
    step_delay_ms: float = 0.0

    def command(self, epoch: int, index: int) -> pb.AdaptationCommand:
        number = epoch * self.decisions_per_epoch + index
        return pb.AdaptationCommand(
            command_id=f"{self.training_run_id}-cmd-{number:07d}",
            command_type=pb.COMMAND_TYPE_SEED,
            target_seed_id=f"seed-{number % 8}",
            training_run_id=self.training_run_id,
            policy_version=1,
            seed=pb.SeedCommand(operation=pb.SEED_OP_GERMINATE, blueprint_id=f"bp-{number % 3}"),
        )

    def state(self, epoch: int) -> pb.SystemStatePacket:
        packet = pb.SystemStatePacket(
            training_run_id=self.training_run_id,
            current_epoch=epoch,
            validation_loss=2.0 / (1.0 + 0.1 * epoch),
            validation_accuracy=min(0.5 + 0.01 * epoch, 0.99),
            training_metrics={MODEL_PARAMETERS_METRIC: 1_000_000.0},
        )
        for seed in range(8):
            packet.seed_states.add(
                seed_id=f"seed-{seed}",
                stage=pb.SEED_STAGE_BLENDING,
                metrics={SEED_PARAMETERS_METRIC: 10_000.0},
            )
        return packet

    def report_ids(self) -> list[str]:
        """Every report the plan produces: one per decision."""
        return [
            report_id_for(self.training_run_id, self.command(e, i).command_id)
            for e in range(self.epochs)
            for i in range(self.decisions_per_epoch)
        ]


async def drive(plan: DrillPlan, reporter: FieldReporter) -> int:
    """Feed the plan to the reporter as a trainer would; returns the calls refused."""
    refused = 0
    for epoch in range(plan.epochs):
        for index in range(plan.decisions_per_epoch):
            refused += not reporter.on_command(plan.command(epoch, index), plan.state(epoch))
            await asyncio.sleep(plan.step_delay_ms / 1000.0)
        refused += not reporter.on_epoch_end(plan.state(epoch))
    refused += not reporter.on_run_end(plan.training_run_id)
    return refused


def all_acked(plan_ids: list[str], reporter: FieldReporter) -> bool:
    return all(reporter.book.state_of(i) is ReportState.ACKED for i in plan_ids)


async def _main(args: argparse.Namespace) -> int:
    keys = KeySettings.from_env(os.environ)
    settings = OonaSettings(redis_url=args.redis_url, key_prefix=args.prefix)
    bus = Bus(open_redis(args.redis_url, settings), settings, keys.load_signer(), source="tamiyo")
    plan = DrillPlan(
        epochs=args.epochs,
        decisions_per_epoch=args.decisions_per_epoch,
        step_delay_ms=args.step_delay_ms,
    )
    report_settings = ReportSettings(
        wal_dir=Path(args.wal_dir),
        windows=WindowSettings(window_epochs=args.window_epochs),
        retry=RetryPolicy(ack_timeout_ms=args.ack_timeout_ms, retry_backoff_max_ms=2_000.0),
        control_poll_interval_ms=20.0,
    )
    reporter = FieldReporter(report_settings, metrics=bus.metrics).start()
    delivery = ReportDelivery(
        reporter, bus, keys.load_keyring(ROLES), DeliverySettings(idle_poll_ms=20.0)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.run(stop))
    started = time.monotonic()
    refused = await drive(plan, reporter)
    ids = plan.report_ids()
    while not all_acked(ids, reporter) and not task.done():
        await asyncio.sleep(0.02)
    stop.set()
    await task
    reporter.close()
    await bus.close()
    summary = {
        "reports": len(ids),
        "refused": refused,
        "published": int(bus.metrics.count("reports_published")),
        "seconds": round(time.monotonic() - started, 3),
    }
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wal-dir", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--decisions-per-epoch", type=int, default=10)
    parser.add_argument("--window-epochs", type=int, default=2)
    parser.add_argument("--step-delay-ms", type=float, default=0.0)
    parser.add_argument("--ack-timeout-ms", type=float, default=300.0)
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
