"""Control: what PPO learns on the simulator in a fixed budget, against the baselines.

Training: ``--train-seeds`` independent trainings (seeds 0, 1, ...), each of
``--updates`` updates of the trainer's defaults (one episode of 16 simulated runs, 48
decisions each, per update; the small policy), one process and one torch thread per
training, side by side. Evaluation: the no-op, random and heuristic policies and each
trained policy play the same ``--eval-runs`` simulated runs (seed ``--eval-seed``;
none of them met in training); the trained policy greedily, as Tamiyo serves it, and
sampling, as it was trained. Each row is the mean episode return with a 95 % interval
(normal approximation over the runs, all trainings' runs pooled for PPO); the ratio is
learned (greedy) over heuristic. The learning curve (each training's mean rollout
return per update, the baselines as dashed lines) is written as an SVG beside the JSON
(``--out``).

``--quick``: 1 training of 6 updates of 8 runs, 8 evaluation runs (a minute or two).
Prints a table; with --json, one final JSON line with the figures, budget and machine.
``--ship DIR``: writes the first training's policy (seed 0) there as the shipped
default policy (``tamiyo_bus/policy/default/``): its checkpoint without optimiser
state, and its card with this command, the git commit and this run's figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from bench.sim import interval, returns
from tamiyo_bus.learning.trainer import PPOTrainer, TrainerSettings, TrainingStats
from tamiyo_bus.policy.checkpoint import checkpoint_bytes
from tamiyo_bus.policy.default import CARD_FILE, CHECKPOINT_FILE
from tamiyo_bus.policy.reference import architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.sim.returns import episode_returns
from weatherlight.training.curve import write_curve

GOAL_RATIO = 1.0
MOONSHOT_RATIO = 1.2


@dataclasses.dataclass(frozen=True)
class Trained:
    """One training's curve and what its policy earns on the evaluation runs."""

    seed: int
    history: list[TrainingStats]
    greedy: list[float]
    sampled: list[float]
    train_s: float
    checkpoint: bytes  # the trained policy and its feature statistics, no optimiser state
    policy_id: str
    architecture_id: str


def train(job: tuple[TrainerSettings, int, int, int]) -> Trained:
    """Train one seed, then evaluate its policy (runs in a worker process)."""
    settings, updates, eval_runs, eval_seed = job
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = PPOTrainer(settings)
    history = [trainer.iterate() for _ in range(updates)]
    train_s = time.perf_counter() - started
    snapshot = trainer.normalizer.snapshot
    policies = [trainer.actor] * eval_runs
    returns = {
        greedy: episode_returns(
            policies, settings.sim, seed=eval_seed, normalizer=snapshot, greedy=greedy
        ).tolist()
        for greedy in (True, False)
    }
    policy_id = f"ppo-sim-seed{settings.seed}"
    checkpoint = checkpoint_bytes(
        trainer.actor, snapshot, policy_id=policy_id, policy_version=updates
    )
    return Trained(
        settings.seed,
        history,
        returns[True],
        returns[False],
        train_s,
        checkpoint,
        policy_id,
        architecture_id(trainer.actor),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=24, help="per training")
    parser.add_argument(
        "--runs",
        type=int,
        default=TrainerSettings().runs_per_rollout,
        help="simulated runs per rollout",
    )
    parser.add_argument("--train-seeds", type=int, default=2)
    parser.add_argument("--eval-runs", type=int, default=32)
    parser.add_argument("--eval-seed", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true", help="a minute or two")
    parser.add_argument(
        "--out", type=Path, default=Path("runs") / "bench-control", help="where the curve goes"
    )
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--ship", type=Path, help="write seed 0's policy and card here")
    args = parser.parse_args()
    if args.quick:
        args.updates, args.runs, args.train_seeds, args.eval_runs = 6, 8, 1, 8
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    settings = [
        dataclasses.replace(TrainerSettings(), runs_per_rollout=args.runs, seed=seed)
        for seed in range(args.train_seeds)
    ]
    jobs = [(s, args.updates, args.eval_runs, args.eval_seed) for s in settings]

    started = time.perf_counter()
    played = {
        name: returns(name, args.eval_runs, args.eval_seed, settings[0].sim)
        for name in ("no_op", "random", "heuristic")
    }
    workers = min(len(jobs), os.cpu_count() or 1)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        trained: list[Trained] = pool.map(train, jobs)
    wall_s = time.perf_counter() - started

    played["ppo_greedy"] = np.concatenate([t.greedy for t in trained])
    played["ppo_sampled"] = np.concatenate([t.sampled for t in trained])
    summary = {name: interval(values) for name, values in played.items()}
    heuristic = summary["heuristic"]["mean"]
    ratio = {
        mode: round(summary[f"ppo_{mode}"]["mean"] / heuristic, 3) for mode in ("greedy", "sampled")
    }
    args.out.mkdir(parents=True, exist_ok=True)
    curve = args.out / "control-curve.svg"
    write_curve(
        curve,
        {f"PPO seed {t.seed}": t.history for t in trained},
        {name: summary[name]["mean"] for name in ("no_op", "random", "heuristic")},
    )

    decisions = settings[0].sim.total_steps // settings[0].sim.decision_every_steps
    print(
        f"control: {args.train_seeds} training(s) x {args.updates} updates x {args.runs} "
        f"runs x {decisions} decisions, evaluated on {args.eval_runs} runs "
        f"(1-min load average {load_before:.2f}, {wall_s:.0f} s in all)"
    )
    print(f"{'policy':<14}{'return':>9}   95 % interval")
    for name, figures in summary.items():
        low, high = figures["ci95_low"], figures["ci95_high"]
        print(f"{name:<14}{figures['mean']:>9.3f}   [{low:.3f}, {high:.3f}]")
    print(
        f"learned / heuristic: greedy {ratio['greedy']}, sampled {ratio['sampled']} "
        f"(goal >= {GOAL_RATIO}, moonshot >= {MOONSHOT_RATIO})"
    )
    print(f"curve {curve}")
    line = {
        "bench": "control",
        "returns": summary,
        "ratio_learned_over_heuristic": ratio["greedy"],
        "ratio_sampled_over_heuristic": ratio["sampled"],
        "goal_ratio": GOAL_RATIO,
        "moonshot_ratio": MOONSHOT_RATIO,
        "per_training": [
            {
                "seed": t.seed,
                "greedy_mean": round(float(np.mean(t.greedy)), 4),
                "sampled_mean": round(float(np.mean(t.sampled)), 4),
                "rollout_returns": [round(h.mean_episode_return, 3) for h in t.history],
                "train_s": round(t.train_s, 1),
            }
            for t in trained
        ],
        "budget": {
            "trainings": args.train_seeds,
            "updates": args.updates,
            "runs_per_rollout": args.runs,
            "decisions_per_training": trained[0].history[-1].decisions,
            "wall_s": round(wall_s, 1),
        },
        "sizes": {
            "epochs": settings[0].sim.epochs,
            "decisions_per_episode": decisions,
            "eval_runs": args.eval_runs,
            "eval_seed": args.eval_seed,
            "profile": str(settings[0].profile),
        },
        "curve": str(curve),
        "machine": machine(loadavg_1m_before=round(load_before, 2), torch_threads=1),
    }
    if args.json:
        print(json.dumps(line))
    if args.ship:
        ship(args.ship, trained[0], settings[0], line)


def ship(
    directory: Path, trained: Trained, settings: TrainerSettings, line: dict[str, object]
) -> None:
    """The shipped default policy: the checkpoint, and a card that says how it was made
    and what it earns (the bench's figures, its own training's among them)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CHECKPOINT_FILE).write_bytes(trained.checkpoint)
    card = {
        "policy_id": trained.policy_id,
        "policy_version": len(trained.history),
        "architecture_id": trained.architecture_id,
        "registry_digest": registry_digest(),
        "profile": str(settings.profile),
        "seed": settings.seed,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "git_commit": git_commit(),
        "trainer": {
            "runs_per_rollout": settings.runs_per_rollout,
            "decision_every_steps": settings.sim.decision_every_steps,
            "decisions_per_episode": settings.sim.total_steps // settings.sim.decision_every_steps,
            "gamma": settings.gae.gamma,
            "gae_lambda": settings.gae.gae_lambda,
        },
        "greedy_mean": round(float(np.mean(trained.greedy)), 4),
        "sampled_mean": round(float(np.mean(trained.sampled)), 4),
        "control_bench": line,
    }
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"shipped {directory / CHECKPOINT_FILE} ({len(trained.checkpoint):,} bytes) and its card")


def git_commit() -> str:
    """HEAD, marked ``-dirty`` when tracked files differ from it."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, check=False).returncode
    return head + ("-dirty" if dirty else "")


if __name__ == "__main__":
    main()
