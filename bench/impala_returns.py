"""What the V-trace learner's policy earns after N updates, against its start policy.

In one process, without the bus: ``--actors`` SimActors (``--runs`` simulated runs each,
seeds 0, 1, ...) play one episode each per round and hand their segments to an
ImpalaLearner, which takes them ``--batch`` at a time (each actor's in turn, or with
``--shuffle S`` in an order drawn from seed S, as segments of several actors may reach
a learner on the bus); after each round every actor plays the learner's current
weights. The start policy and the learnt one then play the
same ``--eval-runs`` simulated runs (seed 1000, never played in training), greedily and
sampling; each row is the mean episode return and the paired difference with a 95 %
interval (normal approximation over the runs). ``kl`` is the mean approx KL of the
policy across one update, on that update's decisions, over the first five updates and
the last five.

Prints a table; with --json, one final JSON line with the figures, sizes and machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.actors.loop import start_policy
from tamiyo_bus.impala.batch import segment_batch
from tamiyo_bus.impala.learner import ImpalaLearner
from tamiyo_bus.impala.settings import ImpalaLossSettings, ImpalaSettings
from tamiyo_bus.learning.ppo import approx_kl
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim.actor import ActorSettings, SimActor, actor_statistics
from tamiyo_bus.sim.returns import episode_returns
from tamiyo_bus.sim.settings import SimSettings
from tamiyo_bus.simic.gate import ValidationGateSettings

EVAL_SEED = 1_000
NEVER = 10**9  # no candidate is ever proposed: the bench measures the learner alone


def paired(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    gain = after - before
    half = 1.96 * float(gain.std(ddof=1)) / math.sqrt(len(gain))
    return {
        "before": round(float(before.mean()), 4),
        "after": round(float(after.mean()), 4),
        "gain": round(float(gain.mean()), 4),
        "ci95_low": round(float(gain.mean()) - half, 4),
        "ci95_high": round(float(gain.mean()) + half, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--updates", type=int, default=20)
    add("--batch", type=int, default=8, help="segments per update")
    add("--lr", type=float, default=ImpalaSettings().base_lr)
    add("--entropy-coef", type=float, default=0.01)
    add("--value-loss-coef", type=float, default=0.5)
    add("--actors", type=int, default=4)
    add("--runs", type=int, default=4, help="simulated runs per actor")
    add("--epochs", type=int, default=3)
    add("--steps-per-epoch", type=int, default=40)
    add("--eval-runs", type=int, default=32)
    add("--seed", type=int, default=0, help="the start policy's (learner's and actors')")
    add("--shuffle", type=int, default=0, help="seed of each round's segment order (0: none)")
    add("--raw-advantages", action="store_true", help="the advantages not normalised")
    add("--behaviour-bootstrap", action="store_true", help="cut segments' last step learnt")
    add("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sim = SimSettings(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    settings = replace(
        ImpalaSettings(), seed=args.seed, batch_segments=args.batch, base_lr=args.lr,
        updates_per_publish=NEVER,
        loss=ImpalaLossSettings(
            value_loss_coef=args.value_loss_coef, entropy_coef=args.entropy_coef,
            normalize_advantages=not args.raw_advantages,
            behaviour_bootstrap=args.behaviour_bootstrap,
        ),
        gate=ValidationGateSettings(min_held_out_decisions=NEVER, sim_evaluation=False),
    )  # fmt: skip
    config = PROFILES[Profile.SMALL]
    torch.manual_seed(args.seed)
    policy = ReferencePolicy(config)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    learner = ImpalaLearner(settings, policy)
    holders = [start_policy(Profile.SMALL, args.seed) for _ in range(args.actors)]
    pending: list[pb.Trajectory] = []
    actors = [
        SimActor(ActorSettings(runs=args.runs, seed=i, sim=sim), holder, pending.append,
                 actor_id=f"actor-{i}")
        for i, holder in enumerate(holders)
    ]  # fmt: skip
    kls: list[float] = []
    started = time.perf_counter()
    while len(kls) < args.updates:
        for actor in actors:
            actor.play()
        if args.shuffle:
            random.Random(args.shuffle * 1000 + len(kls)).shuffle(pending)
        while len(pending) >= args.batch and len(kls) < args.updates:
            batch, pending[:] = pending[: args.batch], pending[args.batch :]
            previous = ReferencePolicy(config)
            previous.load_state_dict(policy.state_dict())
            learner.update(batch)
            with torch.no_grad():
                laid_out = segment_batch(
                    batch, learner.topologies, behaviour_bootstrap=args.behaviour_bootstrap
                )
                real = laid_out.mask.bool()
                moved = laid_out.evaluate(policy).log_probs - laid_out.evaluate(previous).log_probs
                kls.append(float(approx_kl(moved[real])))
        for holder in holders:
            holder.current().module.load_state_dict(policy.state_dict())
    training_s = time.perf_counter() - started

    def returns(weights: dict[str, torch.Tensor], greedy: bool) -> np.ndarray:
        serving = ServingPolicy(config)
        serving.load_state_dict(weights)
        return episode_returns(
            [serving] * args.eval_runs, sim, seed=EVAL_SEED, greedy=greedy,
            normalizer=actor_statistics(),
        )  # fmt: skip

    learnt = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    figures = {
        mode: paired(returns(start, greedy), returns(learnt, greedy))
        for mode, greedy in (("greedy", True), ("sampled", False))
    }
    print(f"{'mode':<8} {'before':>8} {'after':>8} {'gain [95 % interval]':>30}")
    for mode, f in figures.items():
        interval = f"{f['gain']:+.3f} [{f['ci95_low']:+.3f}, {f['ci95_high']:+.3f}]"
        print(f"{mode:<8} {f['before']:>8.3f} {f['after']:>8.3f} {interval:>30}")
    kl = {"first5": round(float(np.mean(kls[:5])), 4), "last5": round(float(np.mean(kls[-5:])), 4)}
    print(f"kl per update: first five {kl['first5']}, last five {kl['last5']}; "
          f"training {training_s:.1f} s, {actors[0].stats.episodes} episodes an actor")  # fmt: skip
    if args.json:
        sizes = {k: v for k, v in vars(args).items() if k != "json"}
        print(json.dumps({
            "bench": "impala_returns", "returns": figures, "kl_per_update": kl,
            "training_s": round(training_s, 1), "sizes": sizes, "machine": machine(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
