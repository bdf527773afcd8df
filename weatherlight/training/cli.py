"""`tamiyo-bus train --env sim`: PPO training of Tamiyo's policy on the simulator.

Each update is one episode of every simulated run under the current policy and one PPO
update on it (tamiyo_bus.learning.trainer). A progress bar while it runs; in the run
directory: ``checkpoint.safetensors`` (the policy's weights and feature statistics,
which Tamiyo loads as any policy checkpoint, with the optimiser's state, the settings
and the progress a ``--resume`` continues from; replaced atomically every
``--checkpoint-every`` updates and at the end), ``updates.jsonl`` (one line of figures
per update) and ``curve.svg`` (the learning curve). ``--env real`` (learning from a
live run's experience) is not available yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch

from tamiyo_bus.learning.trainer import (
    PPOTrainer,
    TrainerSettings,
    TrainingStats,
    constant_lr,
)
from tamiyo_bus.learning.training_checkpoint import restore_trainer, save_trainer
from tamiyo_bus.policy.checkpoint import CheckpointMismatchError
from tamiyo_bus.policy.profiles import Profile
from weatherlight.training.curve import write_curve
from weatherlight.training.progress import TrainingProgress

EXIT_UNAVAILABLE = 2
CHECKPOINT = "checkpoint.safetensors"
UPDATES = "updates.jsonl"
CURVE = "curve.svg"
REAL_REFUSAL = (
    "train: --env real (learning from a live run's field reports and decisions) is not "
    "available yet; use --env sim"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `train` to the CLI."""
    parser = commands.add_parser("train", help="train Tamiyo's policy with PPO on the simulator")
    defaults = TrainerSettings()
    parser.add_argument("--env", choices=("sim", "real"), required=True, help="where to learn")
    parser.add_argument("--updates", type=int, default=40, help="rollouts and PPO updates")
    parser.add_argument(
        "--runs", type=int, default=defaults.runs_per_rollout,
        help="simulated runs per rollout (one episode each)",
    )  # fmt: skip
    parser.add_argument(
        "--epochs", type=int, default=defaults.sim.epochs, help="epochs per simulated episode"
    )
    parser.add_argument("--profile", choices=list(Profile), default=defaults.profile)
    parser.add_argument("--lr", type=float, default=defaults.lr.base_lr, help="learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--out", type=Path, default=Path("runs"), help="parent of the run directory"
    )
    parser.add_argument("--checkpoint-every", type=int, default=5, help="updates")
    parser.add_argument(
        "--resume", type=Path, help="continue from this checkpoint (same settings)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.set_defaults(run=run)


def settings_of(args: argparse.Namespace) -> TrainerSettings:
    defaults = TrainerSettings()
    return replace(
        defaults,
        runs_per_rollout=args.runs,
        profile=Profile(args.profile),
        seed=args.seed,
        sim=replace(defaults.sim, epochs=args.epochs),
        lr=constant_lr(args.lr),
    )


def stats_line(stats: TrainingStats) -> str:
    """One update's figures as a JSON line."""
    return json.dumps(dataclasses.asdict(stats), default=str)


class _Outputs:
    """The run directory's files, each replaced atomically as the run goes on."""

    def __init__(self, run_dir: Path, trainer: PPOTrainer, log: TextIO) -> None:
        self.run_dir = run_dir
        self.trainer = trainer
        self.log = log
        self.history: list[TrainingStats] = []

    def on_update(self, stats: TrainingStats) -> None:
        self.history.append(stats)
        self.log.write(stats_line(stats) + "\n")
        self.log.flush()

    def save(self) -> None:
        save_trainer(self.run_dir / CHECKPOINT, self.trainer)
        write_curve(self.run_dir / CURVE, {f"seed {self.trainer.settings.seed}": self.history})


def run(args: argparse.Namespace) -> int:
    if args.env == "real":
        print(REAL_REFUSAL, file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.updates < 1 or args.checkpoint_every < 1:
        print("train: --updates and --checkpoint-every must be >= 1", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_of(args)
    run_dir = args.out / f"train-{time.strftime('%Y%m%d-%H%M%S')}-s{settings.seed}"
    run_dir.mkdir(parents=True, exist_ok=False)
    progress = TrainingProgress(args.updates)
    with (run_dir / UPDATES).open("w", encoding="utf-8") as log:
        trainer = PPOTrainer(settings)
        outputs = _Outputs(run_dir, trainer, log)
        if args.resume:
            try:
                restore_trainer(trainer, args.resume.read_bytes())
            except CheckpointMismatchError as exc:
                print(f"train: cannot resume from {args.resume}: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
        print(
            f"train: {args.updates} updates of {settings.runs_per_rollout} simulated runs "
            f"({settings.sim.total_steps // settings.sim.decision_every_steps} decisions "
            f"each), {settings.profile} policy, seed {settings.seed}, from update "
            f"{trainer.updates + 1}",
            flush=True,
        )
        for done in range(1, args.updates + 1):
            stats = trainer.iterate()
            outputs.on_update(stats)
            progress.on_update(stats, done)
            if done % args.checkpoint_every == 0 or done == args.updates:
                outputs.save()
        progress.close()
    print(f"checkpoint  {run_dir / CHECKPOINT}")
    print(f"curve       {run_dir / CURVE}")
    print(f"updates     {run_dir / UPDATES}")
    return 0
