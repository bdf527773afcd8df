"""Learning side: the prioritised graph replay and PPO update throughput.

(a) Replay at 100 K transitions of the reference state (16 seeds, 12 layers, 8
    blueprints): insert rate (batches of 64), bytes per transition, and the latency of
    ``sample(256)``: drawing the slots and importance weights from the sum-trees (goal
    p95 <= 1 ms), and, separately, decoding them into graph groups as well.
(b) Evaluating 64 graphs: one forward over their disjoint union against 64 forwards.
(c) PPO update throughput (transitions/s: one epoch of minibatches of 64 over 256
    transitions, every step through the LearningGuard) for the small and the full
    policy, float32 and bfloat16 autocast (the CPU's mixed precision), and how far
    autocast moves the log-probabilities from float32 (approx KL, bfloat16 and float16).

Prints a table; with --json, one final JSON line with the figures, sizes and machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentiles
from oona.breaker import BreakerSettings, CircuitBreaker
from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.guard import LearningGuard
from tamiyo_bus.learning.learner import PPOBatch, PPOLearner
from tamiyo_bus.learning.ppo import MixedPrecision, PPOSettings, approx_kl
from tamiyo_bus.learning.replay import (
    GraphReplay,
    GraphTransition,
    ReplaySettings,
    ReplayStorageSettings,
)
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.reference import PolicyConfig, ReferencePolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.risk import Category
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tests import states as synthetic

SMALL = PolicyConfig(hidden_dim=128, gat_heads=4, gat_head_dim=16, head_hidden_dim=128)
FULL = PolicyConfig()
GOAL_SAMPLE_P95_MS = 1.0
GOAL_BYTES_PER_TRANSITION = 4096
PLACEMENTS = 4  # seed placements among the stored graphs (topologies)


def reference_graphs(count: int) -> list[PolicyGraph]:
    """Reference-size graphs over PLACEMENTS placements: seed 1's blueprint varies."""
    size = synthetic.REFERENCE_SIZE
    host = synthetic.topology(size)
    metadata = {m.blueprint_id: m for m in synthetic.catalogue(size)}
    builder = GraphBuilder(host, list(metadata), RunningNormalizer(update=False))
    rng = random.Random(0)
    out = []
    for step in range(count):
        packet = synthetic.packet(size, host, rng, step=step)
        packet.seed_states[1].blueprint_id = f"bp{step % PLACEMENTS}"
        out.append(builder.build(packet, metadata))
    return out


def transitions(graphs: list[PolicyGraph], policy: ServingPolicy) -> list[GraphTransition]:
    """Each graph with the choice, log-probability and value the serving policy gave."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for i, graph in enumerate(graphs):
        decision = policy.decide(graph, greedy=False, generator=generator)
        category = Category.RED if i % 97 == 0 else Category.GREEN
        out.append(
            GraphTransition(
                graph,
                decision.action,
                decision.log_prob,
                decision.value,
                0.1,
                policy_version=1,
                step=i,
                risk_category=category,
            )
        )
    return out


def bench_replay(pool: list[GraphTransition], capacity: int, iterations: int) -> dict[str, object]:
    replay = GraphReplay(
        ReplaySettings(storage=ReplayStorageSettings(capacity_transitions=capacity))
    )
    batch = 64
    started = time.perf_counter()
    for first in range(0, capacity, batch):
        replay.add([pool[(first + k) % len(pool)] for k in range(min(batch, capacity - first))])
    insert_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    draw, decode, update = [], [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        replay.sampler.sample(256, rng)
        draw.append(time.perf_counter() - t0)
    for _ in range(max(iterations // 10, 10)):
        t0 = time.perf_counter()
        sample = replay.sample(256)
        decode.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        replay.update_priorities(sample, rng.exponential(1.0, 256))
        update.append(time.perf_counter() - t0)
    trees = replay.sampler.all.nodes.nbytes + replay.sampler.rare.nodes.nbytes
    return {
        "capacity": capacity,
        "stored": len(replay),
        "topologies": len(replay.storage.topologies),
        "insert_per_s": round(capacity / insert_s),
        "bytes_per_transition": round(replay.bytes_per_transition(), 1),
        "row_bytes": replay.storage.row_bytes(),
        "resident_mb": round((replay.storage.row_bytes() * capacity + trees) / 1e6, 1),
        "topology_bytes": replay.storage.topology_bytes(),
        "sample_256_ms": percentiles(draw, scale=1e3),
        "sample_256_decoded_ms": percentiles(decode, scale=1e3),
        "update_priorities_256_ms": percentiles(update, scale=1e3),
    }


def bench_evaluation(pool: list[GraphTransition], repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    policy = ReferencePolicy(SMALL)
    chosen = pool[:64]
    batch = GraphTransitions.of([t.graph for t in chosen], [t.action for t in chosen])
    evaluator = GraphPolicyEvaluator(policy)
    every = torch.arange(len(chosen))
    batched, single = [], []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            evaluator.evaluate(batch, every)
            batched.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for t in chosen:
                policy(t.graph)
            single.append(time.perf_counter() - t0)
    b, s = float(np.median(batched)), float(np.median(single))
    return {
        "graphs": len(chosen),
        "groups": len(batch.groups),
        "union_forward_ms": round(b * 1e3, 1),
        "per_graph_forwards_ms": round(s * 1e3, 1),
        "speedup": round(s / b, 1),
    }


def autocast_log_prob_kl(pool: list[GraphTransition]) -> dict[str, float]:
    """approx KL between a policy's log-probabilities under autocast and in float32:
    the ratio noise mixed precision adds before PPO has taken a single step."""
    chosen = pool[:256]
    inputs = GraphTransitions.of([t.graph for t in chosen], [t.action for t in chosen])
    every = torch.arange(len(chosen))
    out = {}
    for name, config in (("small", SMALL), ("full", FULL)):
        torch.manual_seed(0)
        evaluator = GraphPolicyEvaluator(ReferencePolicy(config))
        with torch.no_grad():
            exact = evaluator.evaluate(inputs, every).log_prob
            for dtype in (torch.bfloat16, torch.float16):
                with torch.autocast("cpu", dtype=dtype):
                    mixed = evaluator.evaluate(inputs, every).log_prob
                key = f"{name}/{str(dtype).removeprefix('torch.')}"
                out[key] = round(float(approx_kl(mixed - exact)), 6)
    return out


def bench_updates(
    pool: list[GraphTransition], config: PolicyConfig, updates: int
) -> dict[str, dict[str, object]]:
    """float32 and bfloat16 learners of the same policy, their updates interleaved so
    that the load of a shared machine falls on both alike."""
    chosen = pool[:256]
    n = len(chosen)
    inputs = GraphTransitions.of([t.graph for t in chosen], [t.action for t in chosen])
    advantages = torch.randn(n, generator=torch.Generator().manual_seed(1))
    batch = PPOBatch(inputs, torch.full((n,), -1.5), torch.zeros(n), advantages, advantages)
    learners = {}
    for precision in (MixedPrecision.OFF, MixedPrecision.ON):
        torch.manual_seed(0)
        settings = PPOSettings(
            update_epochs=1, minibatch_transitions=64, target_kl=None, mixed_precision=precision
        )
        guard = LearningGuard(CircuitBreaker("learning", BreakerSettings()), lambda: False)
        learner = PPOLearner(
            GraphPolicyEvaluator(ReferencePolicy(config)),
            guard,
            LRController(LRSettings(base_lr=3e-4)),
            settings,
        )
        learner.update(batch)  # warm-up
        learners[precision.value] = learner
    durations: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(updates):
        for name, learner in learners.items():
            durations[name].append(learner.update(batch).duration_s)
    out: dict[str, dict[str, object]] = {}
    for name, times in durations.items():
        median = float(np.median(times))
        out[name] = {
            "transitions_per_s": round(n / median, 1),
            "update_s": round(median, 3),
            "fastest_update_s": round(min(times), 3),
            "steps_per_update": n // 64,
            "applied_steps": learners[name].guard.outcomes.total(),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=2_000, help="sample(256) draws")
    parser.add_argument("--updates", type=int, default=5, help="timed PPO updates per case")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    graphs = reference_graphs(512)
    torch.manual_seed(0)
    pool = transitions(graphs, ServingPolicy(SMALL))
    replay = bench_replay(pool, args.capacity, args.iterations)
    evaluation = bench_evaluation(pool, repeats=5)
    precision_kl = autocast_log_prob_kl(pool)
    updates = {
        f"{name}/{precision}": row
        for name, config in (("small", SMALL), ("full", FULL))
        for precision, row in bench_updates(pool, config, args.updates).items()
    }

    draw, decoded = replay["sample_256_ms"], replay["sample_256_decoded_ms"]
    print(
        f"replay: {replay['stored']:,} transitions, {replay['topologies']} topologies, "
        f"{replay['bytes_per_transition']} bytes/transition, {replay['resident_mb']} MB"
    )
    print(
        f"  insert {replay['insert_per_s']:,}/s; sample(256) p50/p95 "
        f"{draw['p50']}/{draw['p95']} ms (goal p95 <= {GOAL_SAMPLE_P95_MS}); "
        f"decoded {decoded['p50']}/{decoded['p95']} ms"
    )
    print(
        f"evaluate 64 graphs: union {evaluation['union_forward_ms']} ms vs per graph "
        f"{evaluation['per_graph_forwards_ms']} ms ({evaluation['speedup']}x)"
    )
    print(
        "log-prob approx KL, autocast vs float32 (CPU): "
        + ", ".join(f"{k} {v:.2e}" for k, v in precision_kl.items())
    )
    print(f"{'PPO update':<16}{'transitions/s':>16}{'s/update':>10}")
    for case, row in updates.items():
        print(f"{case:<16}{row['transitions_per_s']:>16}{row['update_s']:>10}")
    if args.json:
        line = {
            "bench": "learn",
            "replay": replay,
            "evaluation": evaluation,
            "ppo_update": updates,
            "autocast_log_prob_kl": precision_kl,
            "goals": {
                "sample_256_p95_ms": GOAL_SAMPLE_P95_MS,
                "bytes_per_transition": GOAL_BYTES_PER_TRANSITION,
            },
            "sizes": {
                "state": asdict(synthetic.REFERENCE_SIZE),
                "policies": {"small": asdict(SMALL), "full": asdict(FULL)},
                "ppo_batch": 256,
                "minibatch": 64,
            },
            "machine": machine(threads=args.threads, torch=torch.__version__),
        }
        print(orjson.dumps(line).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
