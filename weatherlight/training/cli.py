"""`tamiyo-bus train --env sim`: PPO training of Tamiyo's policy on the simulator.

Each update is one episode of every simulated run under the current policy and one PPO
update on it (tamiyo_bus.learning.trainer). A progress bar while it runs; in the run
directory: ``checkpoint.safetensors`` (the policy's weights and feature statistics,
which Tamiyo loads as any policy checkpoint, with the optimiser's state, the settings
and the progress a ``--resume`` continues from; replaced atomically every
``--checkpoint-every`` updates and at the end), ``updates.jsonl`` (one line of figures
per update) and ``curve.svg`` (the learning curve). With ``--telemetry`` each update's
figures also go to the telemetry hub as gauges (the bus at TAMIYO_REDIS_URL, signed
with the configured key, or a throw-away one with ``--ephemeral-keys``).

``--env real``: Tamiyo learns from real training runs through Simic's learner on the
bus, against baselines on the same seeds (weatherlight.training.real).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch

from oona.keyfiles import KeyConfigError
from tamiyo_bus.learning.trainer import (
    PPOTrainer,
    TrainerSettings,
    TrainingSink,
    TrainingStats,
    constant_lr,
)
from tamiyo_bus.learning.training_checkpoint import restore_trainer, save_trainer
from tamiyo_bus.policy.checkpoint import CheckpointMismatchError
from tamiyo_bus.policy.profiles import Profile
from weatherlight.serve import load_keys
from weatherlight.settings import SystemSettings
from weatherlight.training import real_cli
from weatherlight.training.curve import write_curve
from weatherlight.training.progress import TrainingProgress
from weatherlight.training.real import RealTrainingSettings
from weatherlight.training.telemetry import TrainingTelemetry

EXIT_UNAVAILABLE = 2
CHECKPOINT = "checkpoint.safetensors"
UPDATES = "updates.jsonl"
CURVE = "curve.svg"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `train` to the CLI."""
    parser = commands.add_parser(
        "train", help="train Tamiyo's policy with PPO on the simulator or on real runs"
    )
    defaults, real = TrainerSettings(), RealTrainingSettings()
    parser.add_argument("--env", choices=("sim", "real"), required=True, help="where to learn")
    parser.add_argument("--updates", type=int, default=40, help="sim: rollouts and PPO updates")
    parser.add_argument(
        "--runs", type=int, default=0,
        help=f"sim: simulated runs per rollout (default {defaults.runs_per_rollout}); "
        f"real: training runs per arm (default {real.runs})",
    )  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, default=0,
        help=f"epochs per simulated episode (default {defaults.sim.epochs}) or per real run "
        f"(default {real.epochs})",
    )  # fmt: skip
    parser.add_argument("--profile", choices=list(Profile), default=defaults.profile)
    parser.add_argument("--lr", type=float, default=defaults.lr.base_lr, help="learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--out", type=Path, default=Path("runs"), help="parent of the run directory"
    )
    parser.add_argument("--checkpoint-every", type=int, default=5, help="updates")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint (same settings)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument(
        "--telemetry", action="store_true", help="publish each update's figures to the hub"
    )
    parser.add_argument(
        "--ephemeral-keys", action="store_true",
        help="with --telemetry: a throw-away signing key (local trials only)",
    )  # fmt: skip
    parser.add_argument(
        "--baselines", default=",".join(b.value for b in real.baselines),
        help="real: baseline arms on the same seeds, comma-separated (empty: none)",
    )  # fmt: skip
    parser.add_argument(
        "--policy", default=real.policy,
        help="real: the learned arm's first policy, as the demo's --policy names it "
        "(default: the learned policy shipped with the package)",
    )  # fmt: skip
    parser.add_argument(
        "--learn-wait-s", type=float, default=real.learn_wait_s,
        help="real: after each learned run, the most to wait for Simic's learner",
    )  # fmt: skip
    parser.set_defaults(run=run)


def settings_of(args: argparse.Namespace) -> TrainerSettings:
    defaults = TrainerSettings()
    return replace(
        defaults,
        runs_per_rollout=args.runs or defaults.runs_per_rollout,
        profile=Profile(args.profile),
        seed=args.seed,
        sim=replace(defaults.sim, epochs=args.epochs or defaults.sim.epochs),
        lr=constant_lr(args.lr),
    )


def stats_line(stats: TrainingStats) -> str:
    """One update's figures as a JSON line."""
    return json.dumps(dataclasses.asdict(stats), default=str)


class _Outputs:
    """The run directory: the log grows by a line per update; the checkpoint and the
    curve are replaced atomically."""

    def __init__(
        self, run_dir: Path, trainer: PPOTrainer, log: TextIO, telemetry: TrainingSink | None
    ) -> None:
        self.run_dir = run_dir
        self.trainer = trainer
        self.log = log
        self.telemetry = telemetry
        self.history: list[TrainingStats] = []

    def on_update(self, stats: TrainingStats) -> None:
        self.history.append(stats)
        self.log.write(stats_line(stats) + "\n")
        self.log.flush()
        if self.telemetry is not None:
            self.telemetry(stats)

    def save(self) -> None:
        save_trainer(self.run_dir / CHECKPOINT, self.trainer)
        write_curve(self.run_dir / CURVE, {f"seed {self.trainer.settings.seed}": self.history})


def run(args: argparse.Namespace) -> int:
    if args.env == "real":
        return real_cli.run(args)
    if args.updates < 1 or args.checkpoint_every < 1:
        print("train: --updates and --checkpoint-every must be >= 1", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_of(args)
    name = f"train-{time.strftime('%Y%m%d-%H%M%S')}-s{settings.seed}"
    trainer = PPOTrainer(settings)
    if args.resume:
        try:
            restore_trainer(trainer, args.resume.read_bytes())
        except CheckpointMismatchError as exc:
            print(f"train: cannot resume from {args.resume}: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    with ExitStack() as stack:
        telemetry = None
        if args.telemetry:
            system = SystemSettings.from_env()
            try:
                signer, _ = load_keys(system.keys, args.ephemeral_keys)
            except KeyConfigError as exc:
                print(f"train: --telemetry: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            publisher = TrainingTelemetry(system.oona, signer, run=name)
            stack.callback(publisher.close)
            telemetry = publisher.sink
        run_dir = args.out / name
        run_dir.mkdir(parents=True, exist_ok=False)
        log = stack.enter_context((run_dir / UPDATES).open("w", encoding="utf-8"))
        _train(args.updates, args.checkpoint_every, _Outputs(run_dir, trainer, log, telemetry))
    print(f"checkpoint  {run_dir / CHECKPOINT}")
    print(f"curve       {run_dir / CURVE}")
    print(f"updates     {run_dir / UPDATES}")
    return 0


def _train(updates: int, checkpoint_every: int, outputs: _Outputs) -> None:
    trainer = outputs.trainer
    s = trainer.settings
    print(
        f"train: {updates} updates of {s.runs_per_rollout} simulated runs "
        f"({s.sim.total_steps // s.sim.decision_every_steps} decisions each), {s.profile} "
        f"policy, seed {s.seed}, from update {trainer.updates + 1}",
        flush=True,
    )
    progress = TrainingProgress(updates)
    for done in range(1, updates + 1):
        stats = trainer.iterate()
        outputs.on_update(stats)
        progress.on_update(stats, done)
        if done % checkpoint_every == 0 or done == updates:
            outputs.save()
    progress.close()
