"""What Tamiyo on the step path costs a training step, for two hosts, in one run.

For each host the same training runs in several modes, each with a freshly built model
from the same seed:

- ``plain``: Tolaria alone (no packet, no Tamiyo, no Kasmina);
- ``ahead auto``: the defaults: decisions made ahead, at the cadence Tamiyo chooses to
  stay within her share of the step (``max_step_share``, 10 %);
- ``ahead every 1``: decisions made ahead, a packet for the policy every step;
- ``inline every 1``: the step waits for each decision, up to the 5 ms deadline.

Modes run in interleaved rounds so a change in the machine's load hits every mode
alike. A step's time is its training compute (slowed by whatever Tamiyo's worker takes
from it) plus everything Tamiyo and Kasmina add on the trainer's thread (packet,
evaluate_step, apply, alpha, finalize_step). The inference breaker is set never to
open, so the policy really runs at every decision point; late decisions are counted.

Hosts: ``demo`` is the demo's default (digits, CNN 2x2, batch 128); ``heavy`` is an
MLP 3x1024 at batch 256, whose plain step takes about 50 ms on a 2-core machine.

Goals: heavy host <= 1.10 x plain with a decision every step; demo host <= 1.10 x plain
with the auto cadence; a step with nothing to decide or apply (Tamiyo + Kasmina as the
trainer sees it) <= 0.05 ms p95.

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
from oona.keys import UNRESTRICTED, Keyring, Signer
from tamiyo_bus import Tamiyo
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.risk import BreakerBankSettings, RiskSettings
from tamiyo_bus.settings import DecisionMode, StepSettings
from tamiyo_bus.tolaria.data import load
from tamiyo_bus.tolaria.lr import LRController, LRSettings
from tamiyo_bus.tolaria.trainer import StepRecord, Tolaria, TolariaSettings
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble, build_model, resolve_device
from weatherlight.demo.cli import training_threads
from weatherlight.demo.recorder import RunRecorder

NEVER_OPEN = BreakerSettings(failure_threshold=10**9, cooldown_ms=1.0, half_open_max_calls=1)
MISSED = {InferenceOutcome.TIMED_OUT, InferenceOutcome.BUSY, InferenceOutcome.STALE}
DECIDED = {InferenceOutcome.DECIDED, InferenceOutcome.DECIDED_WITHOUT_URZA}
MODES: dict[str, StepSettings | None] = {
    "plain": None,
    "ahead auto": StepSettings(),
    "ahead every 1": StepSettings(decision_every_steps=1),
    "inline every 1": StepSettings(decision_mode=DecisionMode.INLINE, decision_every_steps=1),
}
GOALS = {"heavy_every_step_ratio": 1.10, "demo_auto_ratio": 1.10, "idle_step_ms_p95": 0.05}


@dataclass(frozen=True)
class Host:
    name: str
    spec: RunSpec
    steps_per_round: int


HOSTS = (
    Host("demo", RunSpec(), 60),
    Host("heavy", RunSpec(model="mlp", width=1024, depth=3, batch_size=256), 16),
)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100; NaN for an empty sample."""
    return percentile(values, q / 100) if values else float("nan")


class Mode:
    """One way of running a host: a trainer and the records of its timed steps."""

    def __init__(self, host: Host, name: str, store: UrzaStore, signer: Signer) -> None:
        self.name = name
        step = MODES[name]
        self.recorder = RunRecorder()
        spec = replace(
            host.spec,
            epochs=10**6,
            step=step or StepSettings(),
            risk=RiskSettings(breakers=BreakerBankSettings(inference=NEVER_OPEN)),
        )
        device = resolve_device(spec.device)
        self.tamiyo: Tamiyo | None = None
        if step is not None:
            run = assemble(
                spec, run_id=f"bench-{host.name}-{name}", signer=signer,
                keyring=Keyring.of(signer.public_key(), role=UNRESTRICTED), store=store,
                observers=[self.recorder],
                events=BufferedEventSink(),
            )  # fmt: skip
            self.trainer = run.trainer
            self.data = run.data
            self.kasmina: Kasmina | None = run.kasmina
            self.tamiyo = run.tamiyo
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
        asked = [r for r in records if r.packet is not None]
        decisions = [r.command for r in records if r.command is not None]
        decision_ms = [r.decision_ms for r in asked]
        # Packet, apply, alpha and finalize: what Tolaria and Kasmina add around the call.
        hooks_ms = [r.tamiyo_ms - r.decision_ms for r in asked]
        idle_ms = [r.tamiyo_ms for r in records if r.packet is None]
        reasons = [c.annotations.get("risk_replaced_reason", c.reason) for c in decisions]
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
        if self.tamiyo is not None:
            ages = [
                float(c.global_step - c.decision_step)
                for c, r in zip(decisions, reasons, strict=True)
                if r in DECIDED
            ]
            out.update(
                added_ms_per_step=round(mean - plain_mean_ms, 3),
                added_ms_p50_per_step=round(median - plain_median_ms, 3),
                ratio=round(mean / plain_mean_ms, 3),
                decisions_per_100_steps=round(100.0 * len(decisions) / len(records), 2),
                policy_decided_fraction=round(len(ages) / max(len(decisions), 1), 3),
                late_fraction=round(sum(r in MISSED for r in reasons) / max(len(decisions), 1), 4),
                decision_age_steps_p50=_percentile(ages, 50),
                decision_age_steps_p95=_percentile(ages, 95),
                cadence_steps=self.tamiyo.controller.cadence.steps,
                evaluate_step_ms_p50=round(_percentile(decision_ms, 50), 3),
                evaluate_step_ms_p95=round(_percentile(decision_ms, 95), 3),
                hooks_ms_p50=round(_percentile(hooks_ms, 50), 3),
                hooks_ms_p95=round(_percentile(hooks_ms, 95), 3),
                idle_step_ms_p95=round(_percentile(idle_ms, 95), 4),
                live_seeds_at_end=records[-1].live_seeds,
            )
        if self.kasmina is not None:
            out.update(
                kasmina_apply_ms_p95=round(self.kasmina.apply_latency_p95_ms(), 3),
                kasmina_finalize_ms_p95=round(self.kasmina.finalize_latency_p95_ms(), 3),
            )
        return out


def bench_host(
    host: Host, modes_wanted: list[str], rounds: int, warmup: int, store: UrzaStore, signer: Signer
) -> dict[str, object]:
    modes = [Mode(host, name, store, signer) for name in ("plain", *modes_wanted)]
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
        f"{'host':<6} {'mode':<15} {'step mean':>10} {'added':>8} {'ratio':>6} {'/100':>6} "
        f"{'policy':>7} {'age p95':>8} {'eval p95':>9} {'idle p95':>9} {'cadence':>8}"
    )
    for name, result in results.items():
        modes = result["modes"]
        assert isinstance(modes, dict)
        for mode, f in modes.items():
            if "ratio" not in f:
                print(f"{name:<6} {mode:<15} {f['step_ms_mean']:>10.2f}")
                continue
            print(
                f"{name:<6} {mode:<15} {f['step_ms_mean']:>10.2f} "
                f"{f['added_ms_per_step']:>+8.2f} {f['ratio']:>6.3f} "
                f"{f['decisions_per_100_steps']:>6.1f} {f['policy_decided_fraction']:>7.0%} "
                f"{f['decision_age_steps_p95']:>8.0f} {f['evaluate_step_ms_p95']:>9.3f} "
                f"{f['idle_step_ms_p95']:>9.4f} {f['cadence_steps']:>8}"
            )
    print(
        "(ms; added = mean step with Tamiyo - mean plain step; ratio = mean / plain mean; "
        "/100 = decision points per 100 steps; idle = a step with nothing to decide or apply)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    parser.add_argument(
        "--rounds", type=int, default=8,
        help="interleaved rounds (many short blocks: a burst of load hits every mode alike)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per block")
    parser.add_argument(
        "--modes", default=",".join(m for m in MODES if m != "plain"),
        help="modes to measure beside plain",
    )  # fmt: skip
    parser.add_argument("--hosts", default="demo,heavy")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch threads (0: all cores but one, as the demo trains)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads or training_threads())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
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
                    host, modes, args.rounds, args.warmup, store, signer
                )
    device = resolve_device("auto")
    print_table(results)
    summary = {
        "bench": "overhead",
        "hosts": results,
        "goals": GOALS,
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
