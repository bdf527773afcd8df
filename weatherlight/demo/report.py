"""The run report: one self-contained HTML page (inline SVG, no scripts, no network).

Sections: the summary; loss and accuracy curves; the seed lifecycle timeline per layer;
the decision latency histogram against the deadline; the risk and breaker timeline;
the lifecycle events and the command mix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.telemetry import LifecycleEvent
from tamiyo_bus.risk.engine import Category
from tamiyo_bus.risk.gate import CONSERVATIVE_REASON
from tamiyo_bus.settings import DecisionMode
from weatherlight.demo import svg
from weatherlight.demo.recorder import REPLACED_REASON, RunRecorder, describe
from weatherlight.demo.summary import RunSummary

S = pb.SeedLifecycleStage

STAGE_COLORS = {
    S.SEED_STAGE_GERMINATED: "#a3a3a3",
    S.SEED_STAGE_TRAINING: "#60a5fa",
    S.SEED_STAGE_BLENDING: "#a78bfa",
    S.SEED_STAGE_SHADOWING: "#f59e0b",
    S.SEED_STAGE_PROBATIONARY: "#fb923c",
    S.SEED_STAGE_FOSSILIZED: "#16a34a",
    S.SEED_STAGE_CULLED: "#dc2626",
    S.SEED_STAGE_EMBARGOED: "#fca5a5",
    S.SEED_STAGE_RESETTING: "#e5e7eb",
}
CATEGORY_COLORS = {
    Category.GREEN: "#22c55e",
    Category.YELLOW: "#facc15",
    Category.ORANGE: "#fb923c",
    Category.RED: "#ef4444",
    Category.CRITICAL: "#7f1d1d",
}
NO_DECISION_REASONS = {
    "timeout_inference": "#dc2626",
    "inference_busy": "#f97316",
    "inference_error": "#7f1d1d",
    "timeout_urza": "#a855f7",
}
PAGE_STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:820px;color:#111}"
    "h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;font-size:13px}td,th{padding:2px 10px 2px 0;"
    "text-align:left;vertical-align:top}th{color:#555;font-weight:600}"
    "pre{background:#f6f6f6;padding:10px;font-size:12px;white-space:pre-wrap}"
    "p.note{color:#555;font-size:12.5px}"
)


def _stage_name(stage: int) -> str:
    return pb.SeedLifecycleStage.Name(stage).removeprefix("SEED_STAGE_").lower()  # type: ignore[arg-type]


def _smooth(values: Sequence[float], decay: float = 0.95) -> list[float]:
    out: list[float] = []
    level = math.nan
    for v in values:
        level = v if math.isnan(level) else decay * level + (1 - decay) * v
        out.append(level)
    return out


def _curves(recorder: RunRecorder) -> str:
    steps = [float(r.step) for r in recorder.steps]
    ends = [float(e.step) for e in recorder.epochs]
    loss = svg.line_chart(
        [
            svg.Series("train loss (per step, smoothed)", steps,
                       _smooth([r.loss for r in recorder.steps]), "#93c5fd"),
            svg.Series("train loss (epoch)", ends, [e.train_loss for e in recorder.epochs],
                       "#2563eb"),
            svg.Series("val loss", ends, [e.val_loss for e in recorder.epochs], "#dc2626"),
        ],
        title="Loss", x_label="optimiser step", y_label="cross-entropy",
    )  # fmt: skip
    accuracy = svg.line_chart(
        [
            svg.Series("train", ends, [e.train_accuracy for e in recorder.epochs], "#2563eb"),
            svg.Series("validation", ends, [e.val_accuracy for e in recorder.epochs], "#dc2626"),
        ],
        title="Accuracy",
        x_label="optimiser step",
        y_label="accuracy",
        y_range=(0.0, 1.0),
    )
    return loss + accuracy


def _lifecycle(history: Sequence[LifecycleEvent], seed_ids: Sequence[str], end: int) -> str:
    lanes = []
    for seed_id in seed_ids:
        events = [e for e in history if e.seed_id == seed_id]
        segments = []
        for event, following in zip(events, [*events[1:], None], strict=False):
            if event.to_stage == S.SEED_STAGE_DORMANT:
                continue
            stop = following.step if following else end
            segments.append(
                svg.Segment(
                    float(event.step),
                    float(max(stop, event.step + 1)),
                    STAGE_COLORS.get(event.to_stage, "#999"),
                    f"{seed_id}: {_stage_name(event.to_stage)} from step {event.step} "
                    f"({event.reason}; {event.blueprint_id or '-'})",
                )
            )
        lanes.append(svg.Lane(seed_id, segments))
    legend = [
        (_stage_name(stage), color)
        for stage, color in STAGE_COLORS.items()
        if stage != S.SEED_STAGE_RESETTING  # one step long: too thin to need a key
    ]
    return svg.timeline(
        lanes,
        title="Seed lifecycle per layer (slot)",
        x_label="optimiser step",
        x_max=float(end),
        legend=legend,
    )


def _latency(recorder: RunRecorder, summary: RunSummary) -> str:
    values = [r.decision_ms for r in recorder.steps if r.packet is not None]
    d, deadline = summary.decision_ms, summary.step_deadline_ms
    markers = [
        svg.Marker(d["p50"], "#16a34a", f"p50 {d['p50']:.2f}"),
        svg.Marker(d["p95"], "#ea580c", f"p95 {d['p95']:.2f}"),
    ]
    if summary.decision_mode == DecisionMode.INLINE:
        markers.append(svg.Marker(deadline, "#dc2626", f"deadline {deadline:g}"))
    return svg.histogram(
        values,
        title="evaluate_step latency (as the trainer saw it)",
        x_label="milliseconds",
        markers=markers,
    )


def _above_yellow(recorder: RunRecorder) -> str:
    """Every decision the risk engine put above YELLOW, with the signal that did."""
    rows = [
        (r.step, c.annotations["risk_category"], c.annotations.get("risk_signal", "-"),
         describe(c), c.annotations.get(REPLACED_REASON, c.reason))
        for r, c in recorder.decisions
        if Category[c.annotations.get("risk_category", "GREEN")] > Category.YELLOW
    ]  # fmt: skip
    if not rows:
        return "<p class='note'>No decision was above YELLOW in this run.</p>"
    return _table(rows, ("step", "category", "deciding signal", "command issued", "proposed as"))


def _runs(
    steps: Sequence[int], values: Sequence[object], end: int
) -> list[tuple[int, int, object]]:
    """Consecutive equal values as (start, stop, value)."""
    out: list[tuple[int, int, object]] = []
    for index, (step, value) in enumerate(zip(steps, values, strict=True)):
        stop = steps[index + 1] if index + 1 < len(steps) else end
        if out and out[-1][2] == value:
            out[-1] = (out[-1][0], stop, value)
        else:
            out.append((step, stop, value))
    return out


def _risk(recorder: RunRecorder, end: int) -> str:
    decisions = recorder.decisions
    steps = [r.step for r, _ in decisions]
    severity = [float(c.annotations.get("risk_expected_severity", "nan")) for _, c in decisions]
    markers = [
        svg.Marker(float(r.step), NO_DECISION_REASONS[c.reason], f"step {r.step}: {c.reason}")
        for r, c in decisions
        if c.reason in NO_DECISION_REASONS
    ] + [
        svg.Marker(float(r.step), "#111", f"step {r.step}: {describe(c)} ({c.reason})")
        for r, c in decisions
        if c.command_type in (pb.COMMAND_TYPE_CIRCUIT_BREAKER, pb.COMMAND_TYPE_EMERGENCY)
    ]
    chart = svg.line_chart(
        [svg.Series("policy expected risk severity", [float(s) for s in steps], severity)],
        title="Risk: the policy's expected severity; marks: deadline misses, breaker commands",
        x_label="optimiser step",
        y_label="severity",
        y_range=(0.0, 1.0),
        markers=markers,
    )
    names = {c.name for c in Category}
    category = [c.annotations.get("risk_category", "") for _, c in decisions]
    conservative = [
        "risk_conservative_cause" in c.annotations or c.reason == CONSERVATIVE_REASON
        for _, c in decisions
    ]
    breaker = [c.reason if c.reason.startswith("breaker") else "" for _, c in decisions]
    lanes = [
        svg.Lane(
            "risk category",
            [
                svg.Segment(a, b, CATEGORY_COLORS[Category[str(v)]], f"{v} steps {a}-{b}")
                for a, b, v in _runs(steps, category, end)
                if v in names
            ],
        ),
        svg.Lane(
            "conservative",
            [
                svg.Segment(a, b, "#6b7280", f"conservative mode, steps {a}-{b}")
                for a, b, v in _runs(steps, conservative, end)
                if v
            ],
        ),
        svg.Lane(
            "breaker open",
            [
                svg.Segment(a, b, "#111827", f"{v}, steps {a}-{b}")
                for a, b, v in _runs(steps, breaker, end)
                if v
            ],
        ),
    ]
    legend = [(c.name.lower(), CATEGORY_COLORS[c]) for c in Category]
    band = svg.timeline(
        lanes, title="Risk category, conservative mode and breakers", x_label="optimiser step",
        x_max=float(end), legend=legend,
    )  # fmt: skip
    return chart + band


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def write_report(
    path: Path,
    *,
    summary: RunSummary,
    recorder: RunRecorder,
    history: Sequence[LifecycleEvent],
    seed_ids: Sequence[str],
    flags: dict[str, str],
) -> None:
    end = max(summary.steps, 1)
    events = _table(
        [
            (e.step, e.seed_id, _stage_name(e.from_stage), _stage_name(e.to_stage), e.reason,
             e.blueprint_id or "-")
            for e in history
        ],
        ("step", "seed", "from", "to", "reason", "blueprint"),
    ) if history else "<p class='note'>No seed changed stage in this run.</p>"  # fmt: skip
    commands = _table(_by_count(summary.commands), ("command", "decisions"))
    reasons = _table(_by_count(summary.reasons), ("reason", "count"))
    settings = _table(sorted(flags.items()), ("setting", "value"))
    body = [
        f"<h1>tamiyo-bus run {escape(summary.run_id)}</h1>",
        "<pre>" + escape("\n".join(summary.lines())) + "</pre>",
        "<h2>Training</h2>",
        _curves(recorder),
        "<h2>Seeds</h2>",
        _lifecycle(history, seed_ids, end),
        "<p class='note'>Each lane is one seed slot on a host layer; hover a bar for the "
        "stage, the reason of the transition and the blueprint.</p>",
        "<h2>Decisions</h2>",
        _latency(recorder, summary),
        "<p class='note'>Latency of <code>evaluate_step</code> measured around the call in "
        "the trainer on the steps Tamiyo wanted the state, including the risk gate and "
        "signing. Ahead, the policy decided on another thread; inline, the step waited "
        "for it up to the deadline.</p>",
        "<h2>Risk and breakers</h2>",
        _risk(recorder, end),
        "<h3>Decisions above YELLOW</h3>",
        _above_yellow(recorder),
        "<h2>Lifecycle events</h2>",
        events,
        "<h2>Commands and reasons</h2>",
        commands,
        "<br>",
        reasons,
        "<h2>Settings</h2>",
        settings,
    ]
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>tamiyo-bus run {escape(summary.run_id)}</title>"
        f"<style>{PAGE_STYLE}{svg.STYLE}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    path.write_text(html, encoding="utf-8")
