"""Tamiyo's step path: policy forward and ``evaluate_step`` against the plain PyG model.

For the reference state (16 seeds, 12 layers, 8 blueprints, 12 activations, 12
parameters) and the large state (64, 48, 16, 48, 48), at the specification's full
dimensions (GraphSAGE 256, GAT 4 x 32 = 128), in one run:

(a) the plain PyG HeteroConv reference forward (the same weights),
(b) the fast policy forward (FastPolicy),
(c) ``evaluate_step`` end to end (blueprint lookup, graph build, inference, command,
    risk engine, Ed25519 signature, telemetry hand-off), with its latency breakdown
    (``risk`` is the risk engine's review alone, inside ``gating``) and the fraction
    of calls that hit the deadline (timeout or busy NO_OP, or refused by the inference
    breaker that repeated misses opened); then the same path again with the deadline
    lifted, so that what a whole decision costs (and its breakdown) is measured even
    where the machine cannot decide inside the deadline.

Latencies are p50 / p95 / p99 in milliseconds. Between two ``evaluate_step`` calls the
bench waits until the worker is idle, as a trainer's own step would. On CUDA (when a
GPU is present) (a) and (b) are measured again on the device. Prints a table; with
--json, one final JSON line with the figures, the sizes and the machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from bench.common import percentiles as shared_percentiles
from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from oona.keys import Signer
from tamiyo_bus import TamiyoSettings, build_tamiyo
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.decision_telemetry import DecisionTelemetry
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import StepSettings
from tests import states as synthetic
from tests.states import StaticBlueprintCatalog

GOAL_STEP_P95_MS = {"reference": 5.0, "large": 10.0}
GOAL_FORWARD_P95_MS_CPU = 3.0
GOAL_FORWARD_P95_MS_CUDA = 1.0
GOAL_SPEEDUP = 5.0
LIFTED_DEADLINE_MS = 1_000.0


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """In ms, with the minimum: what the code does when the machine is quiet."""
    return shared_percentiles(samples_s, scale=1e3, with_min=True)


def timed(call: Callable[[], object], iterations: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(max(iterations // 10, 3)):
        call()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


class Collect:
    """Telemetry sink that keeps every record (the bench reads the breakdown)."""

    def __init__(self) -> None:
        self.records: list[DecisionTelemetry] = []

    def publish(self, telemetry: DecisionTelemetry) -> None:
        self.records.append(telemetry)


def build_graphs(
    size: synthetic.StateSize, count: int
) -> tuple[GraphBuilder, list[PolicyGraph], StaticBlueprintCatalog, list[pb.SystemStatePacket]]:
    host = synthetic.topology(size)
    entries = synthetic.catalogue(size)
    catalog = StaticBlueprintCatalog(entries)
    builder = GraphBuilder(host, catalog.ids(), RunningNormalizer(update=False))
    rng = random.Random(7)
    packets = [synthetic.packet(size, host, rng, step=1000 + i) for i in range(count)]
    metadata = {m.blueprint_id: m for m in entries}
    graphs = [builder.build(p, metadata) for p in packets]
    return builder, graphs, catalog, packets


def bench_forward(
    size: synthetic.StateSize, device: str, iterations: int, reference_iterations: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    policy = ServingPolicy(device=device)
    reference = ReferencePolicy(policy.config)
    reference.load_state_dict(policy.state_dict())
    reference.to(device).eval()
    _, graphs, _, _ = build_graphs(size, 8)
    if device == "cuda":
        for g in graphs:
            g.structure.derived.clear()

        def sync() -> None:
            torch.cuda.synchronize()
    else:

        def sync() -> None:
            return None

    on_device = [_to_device(g, device) for g in graphs] if device != "cpu" else graphs
    counter = iter(range(10**9))

    def ref_call() -> object:
        with torch.inference_mode():
            return reference(on_device[next(counter) % len(on_device)])

    def fast_call() -> object:
        return policy.fast(graphs[next(counter) % len(graphs)])

    ref = percentiles(timed(ref_call, reference_iterations, sync))
    fast = percentiles(timed(fast_call, iterations, sync))
    return {
        "reference_forward_ms": ref,
        "forward_ms": fast,
        "speedup_p50": round(ref["p50"] / fast["p50"], 2),
        "speedup_p95": round(ref["p95"] / fast["p95"], 2),
        "packed_weights_mb": round(policy.fast.packed_bytes / 1e6, 2),
        "nodes": graphs[0].structure.num_nodes,
        "edges": graphs[0].structure.num_edges,
    }


def _to_device(graph: PolicyGraph, device: str) -> PolicyGraph:
    return replace(graph, x=graph.x.to(device), edge_attr=graph.edge_attr.to(device))


# the deadline missed, or the policy refused after repeated misses
MISSED = frozenset({InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY, InferenceOutcome.REFUSED})


def bench_step(
    size: synthetic.StateSize, device: str, iterations: int, deadline_ms: float
) -> dict[str, Any]:
    torch.manual_seed(0)
    policy = ServingPolicy(device=device)
    holder = PolicyHolder(
        RunningPolicy(policy, "bench", 1, architecture_id(policy), registry_digest())
    )
    builder, _, static, packets = build_graphs(size, 8)
    settings = StepSettings(step_deadline_ms=deadline_ms)
    # The risk engine reviews every command, as in a real run; the synthetic losses are
    # independent draws, so they are held steady to keep its loss signals realistic.
    for packet in packets:
        packet.training_loss = 1.0
    sink = Collect()
    tamiyo = build_tamiyo(
        TamiyoSettings(settings),
        topology=builder.topology,
        blueprints=static,
        candidates=static.ids(),
        signer=Signer.generate(),
        holder=holder,
        telemetry=sink,
        events=BufferedEventSink(),
    ).start(prefetch_timeout_s=5.0)
    controller = tamiyo.controller
    publisher = tamiyo.telemetry
    assert publisher is not None
    warm = max(iterations // 10, 10)
    samples: list[float] = []
    reasons: list[str] = []
    for i in range(warm + iterations):
        packet = packets[i % len(packets)]
        controller.wait_idle(5.0)
        start = time.perf_counter()
        command = controller.evaluate_step(packet)
        elapsed = time.perf_counter() - start
        if i >= warm:
            samples.append(elapsed)
            reasons.append(command.reason)
    tamiyo.wait_idle(5.0)
    tamiyo.close()
    records = sink.records[warm:]
    missed = sum(r in MISSED for r in reasons)

    def stage(name: str, every_decision: bool = False) -> dict[str, float]:
        # decisions the policy answered in time (the gate may have changed their reason),
        # or every decision for a stage that runs on each (the risk engine's review)
        values = [getattr(r, name) / 1e3 for r in records if every_decision or r.inference_ms > 0]
        return percentiles(values) if values else {}

    return {
        "evaluate_step_ms": percentiles(samples),
        "deadline_hit_fraction": round(missed / len(reasons), 4),
        "outcomes": dict(Counter(reasons)),
        "deadline_ms": settings.step_deadline_ms,
        "breakdown_ms": {
            "build": stage("build_ms"),
            "inference": stage("inference_ms"),
            "gating": stage("gating_ms"),
            "risk": stage("risk_ms", every_decision=True),
            "signing": stage("signing_ms"),
        },
        "telemetry_dropped": publisher.counters.dropped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--reference-iterations", type=int, default=40)
    parser.add_argument(
        "--lifted-iterations",
        type=int,
        default=1000,
        help="decisions with the deadline lifted (their p95 breakdown needs many)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sizes = {"reference": synthetic.REFERENCE_SIZE, "large": synthetic.LARGE_SIZE}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict[str, dict[str, Any]] = {}
    for device in devices:
        for name, size in sizes.items():
            row = bench_forward(size, device, args.iterations, args.reference_iterations)
            row.update(bench_step(size, device, args.iterations, StepSettings().step_deadline_ms))
            # What a whole decision costs when it is allowed to finish: the same path
            # with the deadline lifted, so the breakdown is measured even on a machine
            # too slow (or too busy) to decide inside the real deadline.
            lifted = bench_step(size, device, args.lifted_iterations, LIFTED_DEADLINE_MS)
            row["decision_without_deadline"] = {
                "decisions": args.lifted_iterations,
                "evaluate_step_ms": lifted["evaluate_step_ms"],
                "breakdown_ms": lifted["breakdown_ms"],
                "outcomes": lifted["outcomes"],
            }
            results[f"{device}/{name}"] = row

    print(
        f"{'case':<16}{'ref p50/p95':>16}{'fwd p50/p95':>16}{'x p50':>7}"
        f"{'step p50/p95/p99':>24}{'hits':>7}"
    )
    for case, row in results.items():
        ref, fwd, step = row["reference_forward_ms"], row["forward_ms"], row["evaluate_step_ms"]
        print(
            f"{case:<16}{ref['p50']:>8.2f}/{ref['p95']:<7.2f}"
            f"{fwd['p50']:>8.2f}/{fwd['p95']:<7.2f}{row['speedup_p50']:>7}"
            f"{step['p50']:>9.2f}/{step['p95']:.2f}/{step['p99']:<7.2f}"
            f"{row['deadline_hit_fraction']:>7.1%}"
        )
        lifted = row["decision_without_deadline"]
        whole = lifted["evaluate_step_ms"]
        print(
            f"{'':<16}without deadline: step p50/p95 {whole['p50']:.2f}/{whole['p95']:.2f}; "
            + "breakdown p95 ms: "
            + ", ".join(
                f"{k} {v.get('p95', float('nan')):.3f}" for k, v in lifted["breakdown_ms"].items()
            )
        )
    if args.json:
        line = {
            "bench": "step",
            "results": results,
            "goals": {
                "evaluate_step_p95_ms": GOAL_STEP_P95_MS,
                "forward_p95_ms_cpu": GOAL_FORWARD_P95_MS_CPU,
                "forward_p95_ms_cuda": GOAL_FORWARD_P95_MS_CUDA,
                "forward_speedup_vs_reference": GOAL_SPEEDUP,
                "deadline_hit_fraction_reference": 0.0,
            },
            "sizes": {k: asdict(v) for k, v in sizes.items()},
            "dims": {"sage": 256, "gat": 128, "gat_heads": 4},
            "machine": machine(
                threads=args.threads,
                device=torch.cuda.get_device_name(0) if "cuda" in devices else "cpu",
                torch=torch.__version__,
            ),
        }
        print(orjson.dumps(line).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
