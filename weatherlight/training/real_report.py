"""The report of a `train --env real`: one self-contained HTML page (inline SVG).

Per run and arm: the return (the learner's reward over the run), the policy version
the learned arm started each run with, the validation accuracy reached and the seeds'
parameters at the end; then whether the learned arm's last quarter of runs earned more
than its first (with the interval) and how it did against the baselines on the same
seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

import numpy as np

from tamiyo_bus import Baseline
from weatherlight.demo import svg
from weatherlight.demo.report import PAGE_STYLE
from weatherlight.training.outcomes import QuarterChange, quarter_change
from weatherlight.training.real import LEARNED, RunOutcome


@dataclass(frozen=True)
class RealSummary:
    """The figures the closing line, ``summary.json`` and the report share."""

    runs_per_arm: int
    quarter: QuarterChange  # the learned arm's run return, last quarter - first
    # the same for its return less the no-growth arm's on the same seed (None: no such
    # arm), which takes out what the seed alone makes of a run
    advantage_quarter: QuarterChange | None
    mean_return: dict[str, float]  # per arm
    mean_accuracy: dict[str, float]
    mean_seed_parameters: dict[str, float]
    policy_versions_applied: int  # distinct versions the learned arm ran beyond its first
    candidates_published: int
    candidates_rejected: int

    def lines(self) -> list[str]:
        q = self.quarter
        out = [
            f"learned arm, run return: first quarter {q.first_mean:+.4f}, last quarter "
            f"{q.last_mean:+.4f}, change {q.change:+.4f} (95% interval {q.low:+.4f} .. "
            f"{q.high:+.4f}, {q.runs_per_quarter} runs a quarter)",
        ]
        a = self.advantage_quarter
        if a is not None:
            out.append(
                f"learned arm, return over no growth on the same seed: first quarter "
                f"{a.first_mean:+.4f}, last quarter {a.last_mean:+.4f}, change {a.change:+.4f} "
                f"(95% interval {a.low:+.4f} .. {a.high:+.4f})"
            )
        out += [
            f"policy versions applied: {self.policy_versions_applied}; candidates "
            f"published {self.candidates_published}, rejected {self.candidates_rejected}",
        ]
        for arm, value in self.mean_return.items():
            out.append(
                f"  {arm:<10} mean return {value:+.4f}, val accuracy "
                f"{self.mean_accuracy[arm]:.2%}, seed parameters "
                f"{self.mean_seed_parameters[arm]:,.0f}"
            )
        return out

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def summarise_real(
    outcomes: Sequence[RunOutcome], learner_health: Mapping[str, object] | None
) -> RealSummary:
    by_arm = _by_arm(outcomes)
    learned = by_arm.get(LEARNED, [])
    health = learner_health or {}

    def mean(pick: Callable[[RunOutcome], float]) -> dict[str, float]:
        return {arm: float(np.mean([pick(o) for o in runs])) for arm, runs in by_arm.items()}

    versions = {o.policy_version_start for o in learned} | {o.policy_version_end for o in learned}
    return RealSummary(
        runs_per_arm=len(learned),
        quarter=quarter_change([o.run_return for o in learned]),
        advantage_quarter=_advantage_quarter(learned, by_arm.get(Baseline.NONE.value)),
        mean_return=mean(lambda o: o.run_return),
        mean_accuracy=mean(lambda o: o.final_val_accuracy),
        mean_seed_parameters=mean(lambda o: float(o.seed_parameters)),
        policy_versions_applied=max(len(versions) - 1, 0),
        candidates_published=int(str(health.get("candidates_published", 0))),
        candidates_rejected=int(str(health.get("candidates_rejected", 0))),
    )


def _advantage_quarter(
    learned: Sequence[RunOutcome], none: Sequence[RunOutcome] | None
) -> QuarterChange | None:
    if not none:
        return None
    baseline = {o.seed: o.run_return for o in none}
    return quarter_change([o.run_return - baseline[o.seed] for o in learned if o.seed in baseline])


def _by_arm(outcomes: Sequence[RunOutcome]) -> dict[str, list[RunOutcome]]:
    arms: dict[str, list[RunOutcome]] = {}
    for outcome in outcomes:
        arms.setdefault(outcome.arm, []).append(outcome)
    return arms


def _chart(
    outcomes: Sequence[RunOutcome],
    pick: Callable[[RunOutcome], float],
    *,
    title: str,
    y_label: str,
    arms: Sequence[str] | None = None,
) -> str:
    series = [
        svg.Series(
            arm, [float(o.index + 1) for o in runs], [pick(o) for o in runs], dashed=arm != LEARNED
        )
        for arm, runs in _by_arm(outcomes).items()
        if arms is None or arm in arms
    ]
    return svg.line_chart(series, title=title, x_label="run", y_label=y_label)


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:+.4f}"


def write_real_report(
    path: Path, outcomes: Sequence[RunOutcome], summary: RealSummary, flags: Mapping[str, str]
) -> None:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(str(c))}</td>"
            for c in (
                o.arm,
                o.index + 1,
                o.seed,
                f"v{o.policy_version_start}",
                _fmt(o.run_return),
                _fmt(o.report_reward),
                o.field_reports,
                f"{o.final_val_accuracy:.2%}",
                o.seeds_germinated,
                o.seeds_fossilized,
                f"{o.seed_parameters:,}",
                f"{o.wall_s:.1f}",
                f"{o.learn_wait_s:.1f}",
            )
        )
        + "</tr>"
        for o in outcomes
    )
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "arm",
            "run",
            "seed",
            "policy",
            "return",
            "report reward",
            "reports",
            "val acc",
            "germinated",
            "fossilized",
            "seed params",
            "train s",
            "learn wait s",
        )
    )
    settings = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in sorted(flags.items())
    )
    body = [
        "<h1>tamiyo-bus train --env real</h1>",
        "<pre>" + escape("\n".join(summary.lines())) + "</pre>",
        "<h2>Return per run</h2>",
        _chart(outcomes, lambda o: o.run_return, title="Run return", y_label="return"),
        "<p class='note'>The reward Simic's learner learns from, summed over the run's "
        "decision points (loss log-ratio, accuracy gain, parameter cost, risk events). "
        "Baselines dashed; every arm trains the same seeds.</p>",
        "<h2>Policy in use</h2>",
        _chart(
            outcomes,
            lambda o: float(o.policy_version_start),
            title="Policy version at the start of each run",
            y_label="version",
            arms=[LEARNED],
        ),
        "<h2>What the runs reached</h2>",
        _chart(
            outcomes,
            lambda o: o.final_val_accuracy,
            title="Final validation accuracy",
            y_label="accuracy",
        ),
        _chart(
            outcomes,
            lambda o: float(o.seed_parameters),
            title="Parameters of live seeds at the end",
            y_label="parameters",
        ),
        "<h2>Runs</h2>",
        f"<table><tr>{header}</tr>{rows}</table>",
        "<h2>Settings</h2>",
        f"<table>{settings}</table>",
    ]
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>tamiyo-bus train --env real</title>"
        f"<style>{PAGE_STYLE}{svg.STYLE}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    path.write_text(html, encoding="utf-8")
