"""The simulator: its speed on one core and what the baseline policies earn in it.

(a) environment steps/s with the policy excluded: ``VectorSim.step`` with NO_OP
    commands, a SystemStatePacket built for every run at every decision, per number
    of vectorised runs;
(b) the same plus the unchanged ``GraphBuilder`` building every decision's graph (what
    any policy needs before its forward);
(c) the mean episode return of the no-op, random and heuristic policies over
    ``--episodes`` simulated runs (the same hidden runs for each policy), with a 95 %
    interval (normal approximation), and the heuristic's paired gain over each.

The process is pinned to one core. Prints a table; with --json, one final JSON line
with the figures, the sizes and the machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.baselines import NoOpPolicy, RandomPolicy
from tamiyo_bus.policy.heuristic import HeuristicPolicy
from tamiyo_bus.policy.serving import DecisionPolicy
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.rollout import graph_builder, run_episode

GOAL_STEPS_PER_S = 5_000
Z_95 = 1.96
NO_OP = pb.AdaptationCommand(command_type=pb.COMMAND_TYPE_NO_OP)


def steps_per_s(runs: int, min_steps: int, *, graphs: bool) -> float:
    """Environment steps (all runs together) per second over whole episodes."""
    sim = VectorSim(runs=runs, seed=runs)
    builder = graph_builder(sim)
    metadata = sim.blueprint_metadata
    commands = [NO_OP] * runs
    steps = 0
    started = time.perf_counter()
    while steps < min_steps:
        packets = sim.reset()
        done = False
        while not done:
            if graphs:
                for packet in packets:
                    builder.build(packet, metadata)
            result = sim.step(commands)
            packets, done = result.packets, result.done
        steps += runs * sim.settings.total_steps
    return steps / (time.perf_counter() - started)


def interval(values: np.ndarray) -> dict[str, float]:
    mean = float(values.mean())
    half = Z_95 * statistics.stdev(values.tolist()) / len(values) ** 0.5
    return {
        "mean": round(mean, 4),
        "ci95_low": round(mean - half, 4),
        "ci95_high": round(mean + half, 4),
    }


def returns(name: str, episodes: int, seed: int, settings: SimSettings | None = None) -> np.ndarray:
    makers = {"no_op": NoOpPolicy, "random": RandomPolicy, "heuristic": HeuristicPolicy}
    policies: list[DecisionPolicy] = [makers[name]() for _ in range(episodes)]
    sim = VectorSim(settings, runs=episodes, seed=seed)
    played = run_episode(
        sim, policies, graph_builder(sim), generator=torch.Generator().manual_seed(seed)
    )
    return np.array([e.episode_return for e in played])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--min-steps", type=int, default=40_000, help="per speed figure")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    settings = SimSettings()

    speed = {
        runs: {
            "env_steps_per_s": round(steps_per_s(runs, args.min_steps, graphs=False)),
            "with_graphs_steps_per_s": round(steps_per_s(runs, args.min_steps, graphs=True)),
        }
        for runs in args.runs
    }
    print(
        f"simulator, {settings.epochs} x {settings.steps_per_epoch} steps per episode, a "
        f"decision every {settings.decision_every_steps} steps, one core "
        f"(1-min load average {load_before:.2f})"
    )
    print(f"{'runs':>6}{'(a) env steps/s':>18}{'(b) + graphs':>16}")
    for runs, figures in speed.items():
        print(
            f"{runs:>6}{figures['env_steps_per_s']:>18,}{figures['with_graphs_steps_per_s']:>16,}"
        )
    single = speed[min(speed)]["env_steps_per_s"]
    met = single >= GOAL_STEPS_PER_S
    print(f"goal >= {GOAL_STEPS_PER_S:,} env steps/s on one run: {'met' if met else 'MISSED'}")

    played = {
        name: returns(name, args.episodes, args.seed) for name in ("no_op", "random", "heuristic")
    }
    baselines = {name: interval(values) for name, values in played.items()}
    gains = {
        f"heuristic_minus_{other}": interval(played["heuristic"] - played[other])
        for other in ("no_op", "random")
    }
    print(f"\nepisode return over {args.episodes} runs (95 % interval)")
    for name, figures in {**baselines, **gains}.items():
        low, high = figures["ci95_low"], figures["ci95_high"]
        print(f"{name:<26}{figures['mean']:>9.3f}   [{low:.3f}, {high:.3f}]")
    if args.json:
        line = {
            "bench": "sim",
            "speed": {str(runs): figures for runs, figures in speed.items()},
            "goal_env_steps_per_s": GOAL_STEPS_PER_S,
            "goal_met": met,
            "returns": baselines,
            "gains": gains,
            "sizes": {
                "epochs": settings.epochs,
                "steps_per_epoch": settings.steps_per_epoch,
                "decision_every_steps": settings.decision_every_steps,
                "layers": len(settings.host.layer_kinds),
                "episodes": args.episodes,
                "min_steps": args.min_steps,
            },
            "machine": machine(loadavg_1m_before=round(load_before, 2), pinned_cores=1),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
