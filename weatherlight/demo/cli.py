"""`tamiyo-bus demo`: the main job.

A morphogenetic training run end to end on the embedded server (or TAMIYO_REDIS_URL):
Tolaria trains the host, Tamiyo decides every step (by default with the learned policy
shipped with the package: ``--policy``, weatherlight.demo.policies), Kasmina grows
seeds, Urza supplies blueprints; Weatherlight runs the telemetry hub, Nissa (live
status page), Simic's field-report intake and the policy-update listener beside it. A
progress bar while it runs; then the same data and seed again with no growth, to
compare (``--no-compare`` skips it); at the end a printed summary and, in the run
directory, ``report.html``, ``summary.json``, the field-report log and Simic's store.

Keys are throw-away Ed25519 pairs made for this run, one per signing role (Tamiyo,
Tolaria, Kasmina, Simic, Weatherlight), kept in the run directory (``keys/``, private
keys mode 0600) and trusted by nothing else: a run killed without warning is drained
with them (`tamiyo-bus demo-drain RUN_DIR`), so that Simic recognises the reports it
already stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from tamiyo_bus import Baseline, baseline_policy
from tamiyo_bus.policy.profiles import Profile
from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.settings import DecisionMode
from tamiyo_bus.tolaria.data import DATASETS
from tamiyo_bus.tolaria.models import MODELS
from weatherlight.demo.assembly import Run, RunSpec, resolve_device
from weatherlight.demo.policies import LEARNED, NAMES, PolicyChoice, choose_policy
from weatherlight.demo.progress import ProgressBar, attach_progress
from weatherlight.demo.report import write_report
from weatherlight.demo.session import RunResult, Session
from weatherlight.demo.summary import summarise
from weatherlight.settings import SystemSettings

EXIT_BAD_POLICY = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the CLI."""
    parser = commands.add_parser(
        "demo", help="the main job: a morphogenetic training run with Tamiyo on every step"
    )
    defaults = RunSpec()
    parser.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    parser.add_argument("--model", choices=MODELS, default=defaults.model, help="host model")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="run seed (data, model)")
    parser.add_argument(
        "--device", default=defaults.device, help="auto (CUDA when available), cpu, cuda, cuda:1"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs"), help="parent of the run directory"
    )
    parser.add_argument("--width", type=int, default=defaults.width, help="host layer width")
    parser.add_argument("--depth", type=int, default=defaults.depth, help="host hidden layers")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--decision-every", type=int, default=defaults.step.decision_every_steps,
        help="a decision every N steps (default 0: Tamiyo chooses within --max-step-share)",
    )  # fmt: skip
    parser.add_argument(
        "--max-step-share", type=float, default=defaults.step.max_step_share,
        help="the share of the trainer's step time Tamiyo's decisions may take",
    )  # fmt: skip
    parser.add_argument(
        "--decision-mode", choices=[m.value for m in DecisionMode],
        default=defaults.step.decision_mode.value,
        help="ahead: decide on the previous state, never wait; inline: wait up to "
        "--step-deadline-ms; synchronous: wait for every decision",
    )  # fmt: skip
    parser.add_argument(
        "--step-deadline-ms", type=float, default=defaults.step.step_deadline_ms,
        help="inline mode: how long a step waits for the policy",
    )  # fmt: skip
    parser.add_argument(
        "--reproducible", action="store_true",
        help="synchronous decisions at a fixed cadence, no timings in the packets: the "
        "same seed gives the same commands",
    )  # fmt: skip
    parser.add_argument(
        "--profile", choices=[p.value for p in Profile],
        help="the network's size (default: small on CPU, full on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--policy", default=LEARNED,
        help=f"who decides: {', '.join(NAMES)}, or a policy checkpoint's path (default: "
        "the learned policy shipped with the package)",
    )  # fmt: skip
    parser.add_argument(
        "--no-compare", action="store_true",
        help="skip the second run with no growth on the same data and seed",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch threads for training (default 0: all cores but one, which Tamiyo's "
        "decisions use)",
    )  # fmt: skip
    parser.add_argument(
        "--greedy", action="store_true",
        help="take the policy's arg-max instead of sampling it (exploration is the default)",
    )  # fmt: skip
    parser.add_argument("--nissa-port", type=int, default=0, help="status page port (0: any)")
    parser.set_defaults(run=run)


def training_threads() -> int:
    """All cores but one: the inference worker decides on the one left, so a decision
    does not queue behind the trainer's own threads (on a 2-core machine, one each)."""
    return max((os.cpu_count() or 2) - 1, 1)


def _spec(args: argparse.Namespace) -> RunSpec:
    base = RunSpec()
    step = replace(
        base.step, step_deadline_ms=args.step_deadline_ms, sample_actions=not args.greedy,
        decision_mode=DecisionMode(args.decision_mode), decision_every_steps=args.decision_every,
        max_step_share=args.max_step_share,
    )  # fmt: skip
    return replace(
        base, dataset=args.dataset, model=args.model, epochs=args.epochs, seed=args.seed,
        device=args.device, width=args.width, depth=args.depth, batch_size=args.batch_size,
        profile=Profile(args.profile) if args.profile else None,
        reproducible=args.reproducible, step=step,
    )  # fmt: skip


def _print_run(built: Run, spec: RunSpec) -> None:
    """What the run is about to train, and a warning when its decisions cannot fit."""
    steps = spec.epochs * spec.steps_per_epoch(built.data)
    print(
        f"  host        {spec.model} {spec.depth}x{spec.width} on {spec.dataset}: "
        f"{built.host_parameters:,} parameters, {len(built.kasmina.seeds)} seed slots, "
        f"{steps:,} steps\n"
    )
    step = built.tamiyo.controller.settings
    budget_ms = step.step_deadline_ms - step.finish_reserve_ms
    print(
        f"  policy      {built.tamiyo.holder.current().architecture_id}, "
        f"{step.decision_mode} decisions; one costs about {built.warm_decision_ms:.1f} ms here"
    )
    if step.decision_mode is DecisionMode.INLINE and built.warm_decision_ms > budget_ms:
        print(
            f"  note: a decision takes about {built.warm_decision_ms:.1f} ms on this machine, "
            f"more than the {budget_ms:.1f} ms the {spec.step.step_deadline_ms:g} ms step "
            "deadline leaves it:\n        most steps will be NO_OPs and the inference "
            "breaker will keep the policy out\n        (a longer --step-deadline-ms lets "
            "it decide).\n"
        )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    spec = _spec(args)
    device = resolve_device(spec.device)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.dataset}-{spec.model}-s{spec.seed}"
    run_dir = args.out / run_id
    torch.set_num_threads(args.threads or training_threads())
    try:
        choice = choose_policy(args.policy, device, spec)
    except (ValueError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_BAD_POLICY
    spec = choice.serve(spec)
    holder = choice.holder
    system = SystemSettings.from_env()
    with Session.open(
        run_dir, holder=holder, spec=spec, system=system, nissa_port=args.nissa_port
    ) as session:
        print(
            f"tamiyo-bus demo: run {run_id} on {device} "
            "(throw-away keys, one per role, in the run directory)"
        )
        server = session.server.version() if session.server else session.oona.redis_url
        print(f"  server      {server}")
        print(f"  urza        {session.store.settings.db_path}")
        print(f"  status page {session.side.status_url or '-'}")
        print(f"  run dir     {run_dir}")
        progress: list[ProgressBar] = []

        def started(built: Run) -> None:
            _print_run(built, spec)
            attach_progress(built, progress)

        result = session.run(
            spec, run_id, holder=holder, normalizer=choice.normalizer, on_assembled=started
        )
        progress[0].close()
        no_growth = None
        if not args.no_compare and args.policy != Baseline.NONE.value:
            no_growth = _no_growth(session, spec, run_id)
        status_url = session.side.status_url or "-"
    _write_outputs(args, run_dir, result, session, status_url, str(device), choice, no_growth)
    return 0


def _no_growth(session: Session, spec: RunSpec, run_id: str) -> float:
    """The same data and seed with no growth: its final validation accuracy."""
    print("\n  the same run with no growth, to compare:")
    bars: list[ProgressBar] = []

    none = baseline_policy(Baseline.NONE)
    result = session.run(
        spec, f"{run_id}-no-growth", holder=none,
        on_assembled=lambda built: attach_progress(built, bars),
    )  # fmt: skip
    bars[0].close()
    epochs = result.recorder.epochs
    return epochs[-1].val_accuracy if epochs else math.nan


def _write_outputs(
    args: argparse.Namespace,
    run_dir: Path,
    result: RunResult,
    session: Session,
    status_url: str,
    device: str,
    choice: PolicyChoice,
    no_growth: float | None,
) -> None:
    """The summary (printed and JSON) and the run report."""
    built, counts, reports = result.run, result.report_counts, result.reports
    spec = built.spec
    producers = session.side.producers.values()
    experience = session.experience.stats
    services = {
        "telemetry": f"{sum(p.stats.batched + p.stats.urgent for p in producers):,} packets "
        f"published ({sum(p.stats.urgent for p in producers)} urgent), "
        f"{sum(p.stats.dropped for p in producers)} dropped; Kasmina outbox dropped "
        f"{built.kasmina.outbox.dropped}",
        "field reports": f"{sum(counts.values())} written, {counts[ReportState.ACKED]} acked "
        f"by Simic, {counts[ReportState.PENDING]} pending, {counts[ReportState.PARKED]} parked; "
        f"{reports.refused} offers refused",
        "experience": f"{experience.published} segments of the policy's decisions "
        f"published for the learner, {experience.dropped} dropped",
        "status page": f"{status_url} (served while the demo ran)",
        "run report": str(run_dir / "report.html"),
    }
    summary = summarise(
        run_id=built.run_id, dataset=spec.dataset, model=spec.model, device=device,
        wall_s=result.wall_s, recorder=result.recorder, kasmina=built.kasmina,
        tamiyo=built.tamiyo, host_parameters=built.host_parameters, services=services,
        policy=choice.description, no_growth_val_accuracy=no_growth,
    )  # fmt: skip
    (run_dir / "summary.json").write_text(
        json.dumps(summary.to_json(), indent=2, default=_json_default), encoding="utf-8"
    )
    write_report(
        run_dir / "report.html", summary=summary, recorder=result.recorder,
        history=built.kasmina.history, seed_ids=list(built.kasmina.seeds),
        flags={k: str(v) for k, v in sorted(vars(args).items()) if k != "run"},
    )  # fmt: skip
    print("\n".join(summary.lines()))
    sys.stdout.flush()


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
