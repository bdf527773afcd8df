"""What Tamiyo on the step path costs a training step, for two hosts, in one run.

For each host the same training runs in several modes, each with a freshly built model
from the same seed:

- ``plain``: Tolaria alone (no packet, no Tamiyo, no Kasmina);
- ``every N``: Tamiyo and Kasmina in the loop, asking Tamiyo every N-th step (N = 1 is
  3A, the default; larger N is the decision cadence setting).

Modes run in interleaved rounds (plain, every 1, every 4, ... then again) so a change
in the machine's load hits every mode alike. A step's time is its training compute
plus everything Tamiyo and Kasmina add (packet, evaluate_step, apply, alpha,
finalize_step). The inference breaker is set never to open, so every decision step
really runs the policy (a breaker that opened would make Tamiyo look cheaper than it
is); deadline misses are counted instead.

Hosts: ``demo`` is the demo's default (digits, MLP 3x64, batch 32); ``heavy`` is an
MLP 3x1024 at batch 256, whose plain step takes about 50 ms on a 2-core machine.

Goals (issue 8): the added time per step is no more than the decision's own p95
(nothing else waits), and at most 10 % on the heavy host.

Prints a table; with --json, one final JSON line with the figures, sizes and machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentile
from oona.breaker import BreakerSettings
from oona.events import BufferedEventSink
from oona.keys import Keyring, Signer
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.risk import BreakerBankSettings, RiskSettings
from tamiyo_bus.tolaria.data import load
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tamiyo_bus.tolaria.trainer import StepRecord, Tolaria, TolariaSettings
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble, build_model, resolve_device
from weatherlight.demo.recorder import RunRecorder

NEVER_OPEN = BreakerSettings(failure_threshold=10**9, cooldown_ms=1.0, half_open_max_calls=1)
MISSED = {InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY}


@dataclass(frozen=True)
class Host:
    name: str
    spec: RunSpec
    steps_per_round: int


HOSTS = (
    Host("demo", RunSpec(), 120),
    Host("heavy", RunSpec(width=1024, depth=3, batch_size=256), 16),
)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100; NaN for an empty sample."""
    return percentile(values, q / 100) if values else float("nan")


class Mode:
    """One way of running a host: a trainer and the records of its timed steps."""

    def __init__(self, host: Host, cadence: int, store: UrzaStore, signer: Signer) -> None:
        self.cadence = cadence  # 0: plain
        self.recorder = RunRecorder()
        spec = replace(
            host.spec,
            epochs=10**6,
            decision_every_steps=max(cadence, 1),
            risk=RiskSettings(breakers=BreakerBankSettings(inference=NEVER_OPEN)),
        )
        device = resolve_device(spec.device)
        if cadence:
            run = assemble(
                spec, run_id=f"bench-{host.name}-{cadence}", signer=signer,
                keyring=Keyring.of(signer.public_key()), store=store, observers=[self.recorder],
                events=BufferedEventSink(),
            )  # fmt: skip
            self.trainer = run.trainer
            self.data = run.data
            self.kasmina: Kasmina | None = run.kasmina
        else:
            self.kasmina = None
            self.data = load(spec.dataset, spec.seed).to(device)
            model = build_model(spec, self.data, device)
            self.trainer = Tolaria(
                model,
                self.data,
                TolariaSettings(batch_size=spec.batch_size, seed=spec.seed),
                lr=LRController(LRSettings(base_lr=spec.base_lr)),
                training_run_id=f"bench-{host.name}-plain",
                observers=[self.recorder],
            )
        self.batch = spec.batch_size
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.timed: list[StepRecord] = []

    @property
    def name(self) -> str:
        return f"every {self.cadence}" if self.cadence else "plain"

    def run(self, steps: int, warmup: int) -> None:
        """``warmup`` untimed steps, then ``steps`` timed ones."""
        n = len(self.data.train_x)
        device = self.data.train_x.device
        timed_from = len(self.recorder.steps) + warmup
        for _ in range(warmup + steps):
            index = torch.randint(0, n, (self.batch,), generator=self.generator).to(device)
            self.trainer.train_step(self.data.train_x[index], self.data.train_y[index])
        self.timed.extend(self.recorder.steps[timed_from:])

    def figures(self, plain_mean_ms: float, plain_median_ms: float) -> dict[str, object]:
        records = self.timed
        step_ms = [r.train_ms + r.tamiyo_ms for r in records]
        decisions = [r for r in records if r.command is not None]
        decision_ms = [r.decision_ms for r in decisions]
        # Packet, apply, alpha and finalize: what Tolaria and Kasmina add around the decision.
        hooks_ms = [r.tamiyo_ms - r.decision_ms for r in decisions]
        missed = sum(r.command.reason in MISSED for r in decisions if r.command is not None)
        median = statistics.median(step_ms)
        mean = statistics.fmean(step_ms)
        out: dict[str, object] = {
            "step_ms_p50": round(median, 3),
            "step_ms_mean": round(mean, 3),
            "train_ms_p50": round(statistics.median(r.train_ms for r in records), 3),
            "tamiyo_ms_p50": round(statistics.median(r.tamiyo_ms for r in records), 3),
            "tamiyo_ms_p95": round(_percentile([r.tamiyo_ms for r in records], 95), 3),
            "steps": len(records),
        }
        if self.cadence:
            added = mean - plain_mean_ms
            p95 = _percentile(decision_ms, 95)
            out.update(
                added_ms_per_step=round(added, 3),
                added_ms_p50_per_step=round(median - plain_median_ms, 3),
                ratio=round(mean / plain_mean_ms, 3),
                decisions=len(decisions),
                decision_ms_p50=round(_percentile(decision_ms, 50), 3),
                decision_ms_p95=round(p95, 3),
                hooks_ms_p50=round(_percentile(hooks_ms, 50), 3),
                hooks_ms_p95=round(_percentile(hooks_ms, 95), 3),
                deadline_missed_fraction=round(missed / max(len(decisions), 1), 4),
                added_within_decision_p95=bool(added <= p95),
                live_seeds_at_end=records[-1].live_seeds,
            )
        if self.kasmina is not None:
            out.update(
                kasmina_apply_ms_p95=round(self.kasmina.apply_latency_p95_ms(), 3),
                kasmina_finalize_ms_p95=round(self.kasmina.finalize_latency_p95_ms(), 3),
            )
        return out


def bench_host(
    host: Host, cadences: list[int], rounds: int, warmup: int, store: UrzaStore, signer: Signer
) -> dict[str, object]:
    modes = [Mode(host, c, store, signer) for c in (0, *cadences)]
    gc.collect()
    gc.freeze()  # as the demo does: no full collection re-scans the start-up heap mid-step
    for _ in range(rounds):
        for mode in modes:
            mode.run(host.steps_per_round, warmup)
    plain = modes[0]
    plain_ms = [r.train_ms for r in plain.timed]
    plain_mean, plain_median = statistics.fmean(plain_ms), statistics.median(plain_ms)
    figures = {m.name: m.figures(plain_mean, plain_median) for m in modes}
    spec = host.spec
    return {
        "host": f"{spec.model} {spec.depth}x{spec.width}, batch {spec.batch_size}, {spec.dataset}",
        "host_parameters": sum(p.numel() for p in plain.trainer.model.parameters()),
        "steps_per_round": host.steps_per_round,
        "rounds": rounds,
        "modes": figures,
    }


def print_table(results: dict[str, dict[str, object]]) -> None:
    print(
        f"{'host':<6} {'mode':<9} {'step p50':>9} {'step mean':>10} {'added':>8} {'ratio':>6} "
        f"{'decision p50':>13} {'p95':>6} {'missed':>7} {'Tamiyo p50':>11} {'seeds':>5}"
    )
    for name, result in results.items():
        modes = result["modes"]
        assert isinstance(modes, dict)
        for mode, f in modes.items():
            added = f"{f['added_ms_per_step']:+.2f}" if "added_ms_per_step" in f else "-"
            ratio = f"{f['ratio']:.3f}" if "ratio" in f else "-"
            dp50 = f"{f['decision_ms_p50']:.2f}" if "decision_ms_p50" in f else "-"
            dp95 = f"{f['decision_ms_p95']:.2f}" if "decision_ms_p95" in f else "-"
            missed = (
                f"{f['deadline_missed_fraction']:.1%}" if "deadline_missed_fraction" in f else "-"
            )
            seeds = str(f.get("live_seeds_at_end", "-"))
            print(
                f"{name:<6} {mode:<9} {f['step_ms_p50']:>9.2f} {f['step_ms_mean']:>10.2f} "
                f"{added:>8} {ratio:>6} {dp50:>13} {dp95:>6} {missed:>7} "
                f"{f['tamiyo_ms_p50']:>11.2f} {seeds:>5}"
            )
    print("(ms; added = mean step with Tamiyo - mean plain step; ratio = mean / plain mean)")
    for name, result in results.items():
        modes = result["modes"]
        assert isinstance(modes, dict)
        for mode, f in modes.items():
            if "kasmina_apply_ms_p95" in f:
                print(
                    f"{name} {mode}: around the decision (packet, apply, alpha, finalize) "
                    f"p50 {f['hooks_ms_p50']:.3f} ms, p95 {f['hooks_ms_p95']:.3f} ms; "
                    f"Kasmina apply p95 {f['kasmina_apply_ms_p95']:.3f} ms, "
                    f"finalize p95 {f['kasmina_finalize_ms_p95']:.3f} ms"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument(
        "--rounds", type=int, default=8,
        help="interleaved rounds (many short blocks: a burst of load hits every mode alike)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per block")
    parser.add_argument("--cadences", default="1,4,16", help="decision cadences to measure")
    parser.add_argument("--hosts", default="demo,heavy")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cadences = [int(c) for c in args.cadences.split(",") if c.strip()]
    wanted = {h.strip() for h in args.hosts.split(",")}
    signer = Signer.generate()
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = UrzaStore.open_seeded(UrzaSettings(db_path=Path(tmp) / "urza.sqlite"))
        for host in HOSTS:
            if host.name in wanted:
                results[host.name] = bench_host(
                    host, cadences, args.rounds, args.warmup, store, signer
                )
    device = resolve_device("auto")
    print_table(results)
    deadline = RunSpec().step.step_deadline_ms
    summary = {
        "bench": "overhead",
        "hosts": results,
        "step_deadline_ms": deadline,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(
            torch_threads=torch.get_num_threads(),
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            torch=torch.__version__,
            load_average_before=[round(x, 2) for x in load_before],
            load_average_after=[round(x, 2) for x in os.getloadavg()],
        ),
    }
    if args.json:
        print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
