"""The risk engine's cost per decision: what it adds to ``evaluate_step``.

Two figures, p50 / p95 / p99 in milliseconds over many decisions:

(a) ``RiskGate`` alone (``prepare`` + ``gate_prepared``): score every signal,
    categorise, alarms, conservative mode, restrict the command, events and metrics;
(b) ``StepGate.decide``: (a) plus recording the inference outcome on the inference
    breaker and extracting the signals from a SystemStatePacket (16 seeds, the
    trainer's metrics, blueprint metadata) - the whole risk engine on the step path.

The decisions cycle through a scripted mix so every branch is paid for: mostly calm
steps, loss and latency excursions (YELLOW / ORANGE / RED), a quarantined blueprint
(CRITICAL), inference timeouts, and conservative mode on and off. The budget is
<= 0.2 ms p95 for (b). Prints a table; with --json, one final JSON line with the
figures, the sizes and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentiles
from leyline_pb import leyline_pb2 as pb
from oona.events import BufferedEventSink
from oona.metrics import BusMetrics
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.risk import ConservativeSettings, RiskGate, RiskSettings, StepGate
from tamiyo_bus.risk.signals import DECISION_SIGNALS
from tamiyo_bus.risk.tracker import BlueprintLookup

BUDGET_P95_MS = 0.2
SEEDS = 16
BLUEPRINTS = 8


@dataclass(frozen=True, slots=True)
class Blueprint:
    risk: float
    quarantined: bool


def packet(step: int, loss: float, hook_ms: float, quarantine: bool) -> pb.SystemStatePacket:
    out = pb.SystemStatePacket(
        version=1,
        packet_id=f"p{step}",
        training_run_id="bench",
        current_epoch=step // 500,
        global_step=step,
        training_loss=loss,
    )
    out.training_metrics.update(
        {
            "gradient_norm": 3.0,
            "gradient_variance": 0.2,
            "gradient_conflict_rate": 0.1,
            "step_latency_ms": 120.0,
            "hook_latency_ms": hook_ms,
            "device_memory_fraction": 0.6,
            "host_memory_fraction": 0.4,
            "kasmina_apply_latency_ms": 0.8,
            "kasmina_finalize_latency_ms": 1.5,
        }
    )
    for i in range(SEEDS):
        seed = out.seed_states.add(
            seed_id=f"s{i}",
            stage=pb.SEED_STAGE_TRAINING if i % 2 else pb.SEED_STAGE_DORMANT,
            layer_depth=i,
        )
        if i % 2:
            seed.blueprint_id = "bp-bad" if quarantine and i == 1 else f"bp{i % BLUEPRINTS}"
            seed.metrics["isolation_violations"] = 0.0
    return out


def proposal(step: int) -> pb.AdaptationCommand:
    out = pb.AdaptationCommand(
        version=1,
        command_id=f"c{step}",
        issued_by="tamiyo",
        command_type=pb.COMMAND_TYPE_SEED,
        reason="policy",
        global_step=step,
        training_run_id="bench",
        target_seed_id="s0",
    )
    out.seed.operation = pb.SEED_OP_GERMINATE
    out.seed.blueprint_id = "bp3"
    return out


def scenario(step: int) -> tuple[float, float, bool, InferenceOutcome]:
    """(loss, hook latency ms, quarantined blueprint present, inference outcome)."""
    phase = step % 400
    loss = 2.0 - step * 1e-6
    if 100 <= phase < 103:
        loss *= 1.3  # loss spike
    hook = 6.0 if 150 <= phase < 170 else 0.9
    outcome = InferenceOutcome.TIMED_OUT if 250 <= phase < 252 else InferenceOutcome.DECIDED
    return loss, hook, phase == 300, outcome


def make(clock_s: list[float], lookup: BlueprintLookup) -> tuple[RiskGate, StepGate]:
    settings = RiskSettings(conservative=ConservativeSettings(cooldown_s=5.0))
    gate = RiskGate(settings, BufferedEventSink(), clock=lambda: clock_s[0], metrics=BusMetrics())
    return gate, StepGate(gate, lookup)


def bench(iterations: int) -> dict[str, object]:
    clock_s = [0.0]
    blueprints = {f"bp{i}": Blueprint(0.05 * i, False) for i in range(BLUEPRINTS)}
    blueprints["bp-bad"] = Blueprint(0.9, True)

    def lookup(ids: Sequence[str]) -> dict[str, Blueprint]:
        return {i: blueprints[i] for i in ids if i in blueprints}

    gate, stage = make(clock_s, lookup)

    packets = [packet(s, *scenario(s)[:3]) for s in range(400)]
    signals = [
        stage.tracker.observe(p, blueprints=lookup, timed_out=scenario(s)[3].missed_deadline)
        for s, p in enumerate(packets)
    ]
    gate_ns: list[int] = []
    categories: dict[str, int] = {}
    for step in range(iterations):
        clock_s[0] += 0.1
        command = proposal(step)
        known = {k: v for k, v in signals[step % 400].items() if k not in DECISION_SIGNALS}
        decided = {k: v for k, v in signals[step % 400].items() if k in DECISION_SIGNALS}
        start = time.perf_counter_ns()
        result = gate.gate_prepared(command, gate.prepare(known), decided, 0.1)
        gate_ns.append(time.perf_counter_ns() - start)
        categories[result.category.name] = categories.get(result.category.name, 0) + 1
    clock_s[0] = 0.0
    gate, stage = make(clock_s, lookup)
    decide_ns: list[int] = []
    conservative_steps = 0
    for step in range(iterations):
        clock_s[0] += 0.1
        command = proposal(step)
        outcome = scenario(step)[3]
        start = time.perf_counter_ns()
        if stage.inference_allowed():
            result = stage.decide(
                packets[step % 400],
                command,
                outcome=outcome,
                policy_expected_severity=0.1,
                feature_coverage=0.97,
            )
        else:
            result = stage.decide(
                packets[step % 400],
                command,
                outcome=InferenceOutcome.REFUSED,
                policy_expected_severity=None,
            )
        decide_ns.append(time.perf_counter_ns() - start)
        conservative_steps += result.conservative
    return {
        "gate_ms": percentiles(gate_ns, scale=1e-6),
        "decide_ms": percentiles(decide_ns, scale=1e-6),
        "categories": categories,
        "conservative_fraction": round(conservative_steps / iterations, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    figures = bench(args.iterations)
    print(
        f"risk engine per decision, {args.iterations} decisions, {SEEDS} seeds "
        f"(1-min load average {load_before:.2f} on {os.cpu_count()} cores)"
    )
    print(f"{'figure':<34}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for label, key in (
        ("(a) RiskGate (prepare + gate)", "gate_ms"),
        ("(b) StepGate.decide (whole engine)", "decide_ms"),
    ):
        p = figures[key]
        assert isinstance(p, dict)
        print(f"{label:<34}{p['p50']:>10.4f}{p['p95']:>10.4f}{p['p99']:>10.4f}")
    decide = figures["decide_ms"]
    assert isinstance(decide, dict)
    ok = decide["p95"] <= BUDGET_P95_MS
    print(f"budget p95 <= {BUDGET_P95_MS} ms: {'met' if ok else 'MISSED'}")
    print(f"categories (a): {figures['categories']}")
    if args.json:
        line = {
            "bench": "risk",
            **figures,
            "budget_p95_ms": BUDGET_P95_MS,
            "budget_met": ok,
            "sizes": {"iterations": args.iterations, "seeds": SEEDS, "blueprints": BLUEPRINTS},
            "machine": machine(loadavg_1m_before=round(load_before, 2)),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
