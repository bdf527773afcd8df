"""Tamiyo's step path, per policy profile (small, full) and state size (reference, large).

For each profile and state, in one run:

(a) forward: the plain PyG HeteroConv reference (the same weights) against the fast
    forward; the packed weights' size and the parameter count;
(b) a whole decision with no deadline (``synchronous`` mode: blueprint lookup, graph
    build, forward, masked choice, risk gate, Ed25519 signature), with its breakdown;
(c) ``ahead`` mode (the default) beside a synthetic trainer whose step spends
    ``--host-step-ms`` in torch kernels: ``evaluate_step`` on the trainer's thread (the
    hand-off, the gate and the signature of the decision made on an earlier state),
    the decision's age in steps, the share of decision points served by a policy
    decision, decisions per 100 steps and the cadence Tamiyo chose;
(d) ``inline`` mode at the 5 ms deadline: ``evaluate_step`` and the share of calls that
    hit the deadline (a timeout or busy NO_OP, or refused by the breaker misses opened).

Latencies are p50 / p95 / p99 in milliseconds. On CUDA (when a GPU is present) (a) is
measured again on the device, eager and replayed from a CUDA graph. Prints a table;
with --json, one final JSON line with the figures, the sizes and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
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
from tamiyo_bus import Tamiyo, TamiyoSettings, build_tamiyo
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.decision_telemetry import DecisionTelemetry
from tamiyo_bus.policy.cuda_graph import GraphedForward
from tamiyo_bus.policy.features import NormalizerSettings, RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder, PolicyGraph
from tamiyo_bus.policy.profiles import PROFILES, Profile
from tamiyo_bus.policy.reference import ReferencePolicy, architecture_id
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.security.policy_update import PolicyHolder, RunningPolicy
from tamiyo_bus.settings import DecisionMode, StepSettings
from tests import states as synthetic
from tests.states import StaticBlueprintCatalog

GOALS = {
    "ahead_evaluate_step_p95_ms": 0.5,
    "forward_small_p95_ms_cpu": 3.0,
    "forward_full_p95_ms_cuda_graphed": 1.0,
    "policy_decided_fraction": 0.9,
}
INLINE_DEADLINE_MS = StepSettings().step_deadline_ms
# the deadline missed, or the policy refused after repeated misses
MISSED = frozenset({InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY, InferenceOutcome.REFUSED})


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """In ms, with the minimum: what the code does when the machine is quiet."""
    return shared_percentiles(samples_s, scale=1e3, with_min=True) if samples_s else {}


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
    packets = [synthetic.packet(size, host, rng, step=i) for i in range(count)]
    # The risk engine reviews every command, as in a real run; the synthetic losses are
    # independent draws, so they are held steady to keep its loss signals realistic.
    for packet in packets:
        packet.training_loss = 1.0
    metadata = {m.blueprint_id: m for m in entries}
    graphs = [builder.build(p, metadata) for p in packets]
    return builder, graphs, catalog, packets


def bench_forward(
    profile: Profile, size: synthetic.StateSize, device: str, iterations: int, reference: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    policy = ServingPolicy(PROFILES[profile], device=device)
    plain = ReferencePolicy(policy.config)
    plain.load_state_dict(policy.state_dict())
    plain.to(device).eval()
    _, graphs, _, _ = build_graphs(size, 8)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    on_device = [
        dataclasses.replace(g, x=g.x.to(device), edge_attr=g.edge_attr.to(device)) for g in graphs
    ]
    counter = iter(range(10**9))

    def plain_call() -> object:
        with torch.inference_mode():
            return plain(on_device[next(counter) % len(on_device)])

    def fast_call() -> object:
        return policy.fast(graphs[next(counter) % len(graphs)])

    ref = percentiles(timed(plain_call, reference, sync))
    fast = percentiles(timed(fast_call, iterations, sync))
    row: dict[str, Any] = {
        "reference_forward_ms": ref,
        "forward_ms": fast,
        "speedup_p50": round(ref["p50"] / fast["p50"], 2),
        "packed_weights_mb": round(policy.fast.packed_bytes / 1e6, 2),
        "parameters": sum(p.numel() for p in policy.parameters()),
        "nodes": graphs[0].structure.num_nodes,
        "edges": graphs[0].structure.num_edges,
    }
    if device == "cuda":
        graphed = GraphedForward(policy.fast)

        def graphed_call() -> object:
            return graphed(graphs[next(counter) % len(graphs)])

        row["forward_graphed_ms"] = percentiles(timed(graphed_call, iterations, sync))
        row["graph_captures"] = graphed.captures
    return row


def make_tamiyo(profile: Profile, size: synthetic.StateSize, device: str, step: StepSettings
                ) -> tuple[Tamiyo, Collect, list[pb.SystemStatePacket]]:  # fmt: skip
    torch.manual_seed(0)
    policy = ServingPolicy(PROFILES[profile], device=device)
    holder = PolicyHolder(
        RunningPolicy(policy, "bench", 1, architecture_id(policy), registry_digest())
    )
    builder, _, static, packets = build_graphs(size, 8)
    sink = Collect()
    tamiyo = build_tamiyo(
        TamiyoSettings(step, normalizer=NormalizerSettings(update=False)),
        topology=builder.topology,
        blueprints=static,
        candidates=static.ids(),
        signer=Signer.generate(),
        holder=holder,
        telemetry=sink,
        events=BufferedEventSink(),
    ).start(prefetch_timeout_s=5.0)
    return tamiyo, sink, packets


def packet_at(
    packets: list[pb.SystemStatePacket], step: int, host_ms: float
) -> pb.SystemStatePacket:
    packet = pb.SystemStatePacket()
    packet.CopyFrom(packets[step % len(packets)])
    packet.global_step = step
    packet.training_metrics["step_latency_ms"] = host_ms
    return packet


def bench_synchronous(
    profile: Profile, size: synthetic.StateSize, device: str, decisions: int
) -> dict[str, Any]:
    """What a whole decision costs when the step waits for it (the breakdown's source)."""
    step = StepSettings(decision_mode=DecisionMode.SYNCHRONOUS, decision_every_steps=1)
    tamiyo, sink, packets = make_tamiyo(profile, size, device, step)
    warm = max(decisions // 10, 10)
    samples = []
    for i in range(warm + decisions):
        packet = packet_at(packets, i, 1.0)
        start = time.perf_counter()
        tamiyo.evaluate_step(packet)
        if i >= warm:
            samples.append(time.perf_counter() - start)
    tamiyo.wait_idle(5.0)
    tamiyo.close()
    records = [r for r in sink.records[warm:] if r.inference_ms > 0]

    def stage(name: str) -> dict[str, float]:
        return percentiles([getattr(r, name) / 1e3 for r in records])

    return {
        "decisions": decisions,
        "evaluate_step_ms": percentiles(samples),
        "breakdown_ms": {
            name.removesuffix("_ms"): stage(name)
            for name in ("build_ms", "inference_ms", "gating_ms", "risk_ms", "signing_ms")
        },
    }


def host_step(ms: float) -> Callable[[], None]:
    """A trainer's step of about ``ms``, spent in torch kernels (which release the
    interpreter, as a real training step's do)."""
    a, b = torch.randn(192, 192), torch.randn(192, 192)
    started = time.perf_counter()
    for _ in range(20):
        torch.mm(a, b)
    per_mm_ms = (time.perf_counter() - started) * 1000.0 / 20
    repeats = max(int(ms / per_mm_ms), 1)

    def step() -> None:
        for _ in range(repeats):
            torch.mm(a, b)

    return step


def bench_ahead(
    profile: Profile, size: synthetic.StateSize, device: str, steps: int, host_ms: float
) -> dict[str, Any]:
    step_settings = StepSettings(decision_mode=DecisionMode.AHEAD)
    tamiyo, _, packets = make_tamiyo(profile, size, device, step_settings)
    tamiyo.warm_up(packet_at(packets, 0, host_ms))
    train = host_step(host_ms)
    controller = tamiyo.controller
    calls: list[float] = []
    commands: list[pb.AdaptationCommand] = []
    for step in range(steps):
        train()
        if not controller.wants_state(step):
            continue
        packet = packet_at(packets, step, host_ms)
        start = time.perf_counter()
        command = controller.evaluate_step(packet)
        calls.append(time.perf_counter() - start)
        if command is not None:
            commands.append(command)
    tamiyo.close()
    decided = [
        c for c in commands if c.annotations.get("risk_replaced_reason", c.reason) in DECIDED
    ]
    ages = [float(c.global_step - c.decision_step) for c in decided]
    return {
        "host_step_ms": host_ms,
        "steps": steps,
        "evaluate_step_ms": percentiles(calls),
        "decision_age_steps": shared_percentiles(ages) if ages else {},
        "policy_decided_fraction": round(len(decided) / max(len(commands), 1), 3),
        "decisions_per_100_steps": round(100.0 * len(commands) / steps, 2),
        "cadence_steps": controller.cadence.steps,
        "decision_cost_ms": round(controller.cadence.decision_cost.value, 3),
        "outcomes": dict(Counter(c.reason for c in commands)),
    }


DECIDED = frozenset({InferenceOutcome.DECIDED, InferenceOutcome.DECIDED_WITHOUT_URZA})


def bench_inline(
    profile: Profile, size: synthetic.StateSize, device: str, iterations: int
) -> dict[str, Any]:
    step = StepSettings(decision_mode=DecisionMode.INLINE, decision_every_steps=1)
    tamiyo, _, packets = make_tamiyo(profile, size, device, step)
    samples, reasons = [], []
    for i in range(iterations):
        tamiyo.controller.wait_idle(5.0)  # as a trainer's own step would
        start = time.perf_counter()
        command = tamiyo.evaluate_step(packet_at(packets, i, 1.0))
        samples.append(time.perf_counter() - start)
        assert command is not None
        reasons.append(command.reason)
    tamiyo.wait_idle(5.0)
    tamiyo.close()
    return {
        "deadline_ms": INLINE_DEADLINE_MS,
        "evaluate_step_ms": percentiles(samples),
        "deadline_hit_fraction": round(sum(r in MISSED for r in reasons) / len(reasons), 4),
        "outcomes": dict(Counter(reasons)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--reference-iterations", type=int, default=40)
    parser.add_argument("--decisions", type=int, default=300, help="synchronous decisions")
    parser.add_argument("--ahead-steps", type=int, default=1_500)
    parser.add_argument("--host-step-ms", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the worker's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sizes = {"reference": synthetic.REFERENCE_SIZE, "large": synthetic.LARGE_SIZE}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict[str, dict[str, Any]] = {}
    for device in devices:
        for profile in Profile:
            for name, size in sizes.items():
                row = bench_forward(
                    profile, size, device, args.iterations, args.reference_iterations
                )
                row["whole_decision"] = bench_synchronous(profile, size, device, args.decisions)
                row["ahead"] = bench_ahead(
                    profile, size, device, args.ahead_steps, args.host_step_ms
                )
                row["inline"] = bench_inline(profile, size, device, args.iterations)
                results[f"{device}/{profile}/{name}"] = row

    print(
        f"{'case':<22}{'ref p50':>8}{'fwd p50/p95':>14}{'MB':>6}{'whole p50/p95':>15}"
        f"{'ahead eval p50/p95':>20}{'age p95':>8}{'policy':>8}{'inline hit':>11}"
    )
    for case, row in results.items():
        fwd, whole = row["forward_ms"], row["whole_decision"]["evaluate_step_ms"]
        ahead, inline = row["ahead"], row["inline"]
        evaluate = ahead["evaluate_step_ms"]
        print(
            f"{case:<22}{row['reference_forward_ms']['p50']:>8.2f}"
            f"{fwd['p50']:>7.2f}/{fwd['p95']:<6.2f}{row['packed_weights_mb']:>6.1f}"
            f"{whole['p50']:>8.2f}/{whole['p95']:<6.2f}"
            f"{evaluate.get('p50', float('nan')):>12.3f}/{evaluate.get('p95', float('nan')):<7.3f}"
            f"{ahead['decision_age_steps'].get('p95', float('nan')):>8.0f}"
            f"{ahead['policy_decided_fraction']:>8.0%}{inline['deadline_hit_fraction']:>11.0%}"
        )
    if args.json:
        line = {
            "bench": "step",
            "results": results,
            "goals": GOALS,
            "sizes": {k: asdict(v) for k, v in sizes.items()},
            "profiles": {p.value: asdict(PROFILES[p]) for p in Profile},
            "machine": machine(
                threads=args.threads,
                device=torch.cuda.get_device_name(0) if "cuda" in devices else "cpu",
                torch=torch.__version__,
            ),
        }
        print(orjson.dumps(line).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
