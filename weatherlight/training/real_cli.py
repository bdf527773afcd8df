"""`tamiyo-bus train --env real`'s outputs: a line per run as it ends, and at the end the
summary (printed, ``summary.json``) and ``report.html``, in the run directory beside the
sessions' own directories (``learned-<name>/``, ``baselines-<name>/``: their servers'
data, field-report logs, Simic's stores and the learner's state)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, replace

from tamiyo_bus import Baseline
from weatherlight.settings import SystemSettings
from weatherlight.training.real import RealTrainingSettings, RunOutcome, train_real
from weatherlight.training.real_report import summarise_real, write_real_report

OUTCOMES = "outcomes.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"


def settings_of(args: argparse.Namespace) -> RealTrainingSettings:
    defaults = RealTrainingSettings()
    baselines = tuple(Baseline(name) for name in args.baselines.split(",") if name)
    return replace(
        defaults,
        runs=args.runs or defaults.runs,
        epochs=args.epochs or defaults.epochs,
        seed=args.seed,
        baselines=baselines,
        learn_wait_s=args.learn_wait_s,
        policy=args.policy,
    )


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = settings_of(args)
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    run_dir = args.out / f"train-real-{time.strftime('%Y%m%d-%H%M%S')}-s{settings.seed}"
    run_dir.mkdir(parents=True, exist_ok=False)
    arms = ", ".join(["learned", *(b.value for b in settings.baselines)])
    print(
        f"train --env real: {settings.runs} runs of {settings.epochs} epochs per arm ({arms}), "
        f"seeds {settings.seed}..{settings.seed + settings.runs - 1}; run dir {run_dir}",
        flush=True,
    )
    with (run_dir / OUTCOMES).open("w", encoding="utf-8") as log:

        def line(outcome: RunOutcome) -> None:
            log.write(json.dumps(asdict(outcome), default=_json_default) + "\n")
            log.flush()
            print(
                f"  {outcome.arm} run {outcome.index + 1}: return {outcome.run_return:+.4f}, "
                f"val acc {outcome.final_val_accuracy:.2%}, {outcome.seeds_germinated} "
                f"germinated, policy v{outcome.policy_version_start}",
                flush=True,
            )

        result = train_real(settings, run_dir, SystemSettings.from_env(), on_outcome=line)
    summary = summarise_real(result.outcomes, result.learner_health)
    (run_dir / SUMMARY).write_text(
        json.dumps(summary.to_json(), indent=2, default=_json_default), encoding="utf-8"
    )
    flags = {k: str(v) for k, v in sorted(vars(args).items()) if k != "run"}
    write_real_report(run_dir / REPORT, result.outcomes, summary, flags)
    print("\n".join(summary.lines()))
    print(f"report      {run_dir / REPORT}")
    print(json.dumps(summary.to_json(), default=_json_default))
    return 0
