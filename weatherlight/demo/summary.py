"""The run's figures, computed once at the end: printed, put in the report and written
as ``summary.json``."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus import Tamiyo
from tamiyo_bus.decision import InferenceOutcome
from tamiyo_bus.kasmina.executor import Kasmina
from tamiyo_bus.risk.engine import Category
from tamiyo_bus.settings import DecisionMode
from weatherlight.demo.recorder import RunRecorder, describe, policy_decided

S = pb.SeedLifecycleStage


def _percentiles(values: list[float]) -> dict[str, float]:
    data = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(data.max())}


@dataclass
class RunSummary:
    run_id: str
    dataset: str
    model: str
    device: str
    epochs: int
    steps: int
    wall_s: float
    final_train_loss: float
    final_val_loss: float
    final_val_accuracy: float
    best_val_accuracy: float
    policy: str  # who decided: the network (its architecture) or a baseline
    decision_mode: str
    decisions: int  # decision points: commands handed to Kasmina
    policy_decisions: int  # of those, decided by the policy (not a late/busy/stale/breaker NO_OP)
    decision_age_steps: dict[str, float]  # applied step - step decided on, policy decisions
    cadence_steps: int  # the decision interval in force at the end
    decision_cost_ms: float  # measured cost of one decision (moving average)
    # Tamiyo's time (the worker's CPU, evaluate_step on the trainer's thread) / training time
    tamiyo_share: float
    decision_ms: dict[str, float]  # evaluate_step as the trainer saw it
    step_deadline_ms: float
    deadline_misses: int  # inline: decisions answered NO_OP because the deadline passed
    train_ms: dict[str, float]
    tamiyo_ms: dict[str, float]  # all Tamiyo and Kasmina add per step
    idle_step_ms: dict[str, float]  # steps with nothing to decide or apply
    commands: dict[str, int]
    reasons: dict[str, int]
    risk_categories: dict[str, int]
    risk_signals_above_yellow: dict[str, int]  # the signal that decided each ORANGE or worse
    applied: int
    refused: dict[str, int]
    rejected: dict[str, int]
    apply_ms_p95: float
    finalize_ms_p95: float
    isolation_checks: int
    isolation_violations: int
    seeds_germinated: int
    seeds_fossilized: int
    seeds_culled: int
    live_seeds: int
    seed_parameters: int
    host_parameters: int
    services: dict[str, str] = field(default_factory=dict)
    # the same data and seed with no growth (the none baseline): its final validation
    # accuracy; empty when the run was not compared
    no_growth: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def lines(self) -> list[str]:
        d = self.decision_ms
        t = self.tamiyo_ms
        age = self.decision_age_steps
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.commands.items(), key=lambda kv: -kv[1]))
        refused = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())) or "none"
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        risk = ", ".join(f"{k} {v}" for k, v in self.risk_categories.items()) or "-"
        drivers = ", ".join(f"{k} {v}" for k, v in self.risk_signals_above_yellow.items())
        if drivers:
            risk += f"; above YELLOW by {drivers}"
        out = [
            f"run {self.run_id}: {self.dataset} / {self.model} on {self.device}, "
            f"{self.epochs} epochs, {self.steps:,} steps in {self.wall_s:.1f} s",
            f"  accuracy      val {self.final_val_accuracy:.2%} "
            f"(best {self.best_val_accuracy:.2%}), val loss {self.final_val_loss:.4f}, "
            f"train loss {self.final_train_loss:.4f}",
            f"  decisions     {self.decisions:,} by {self.policy} ({self.decision_mode}), "
            f"{self.policy_decisions:,} decided by the policy "
            f"({self.policy_decisions / max(self.decisions, 1):.0%}); age p50 "
            f"{age['p50']:.0f} / p95 {age['p95']:.0f} steps; every {self.cadence_steps} steps "
            f"(a decision costs {self.decision_cost_ms:.2f} ms)",
            f"  step cost     training p50 {self.train_ms['p50']:.2f} ms; Tamiyo+Kasmina p50 "
            f"{t['p50']:.3f} ms, p95 {t['p95']:.3f} ms (idle steps p95 "
            f"{self.idle_step_ms['p95']:.3f} ms); Tamiyo's share {self.tamiyo_share:.1%}",
            f"  evaluate_step p50 {d['p50']:.2f} ms, p95 {d['p95']:.2f} ms, max {d['max']:.2f} ms"
            + (
                f"; deadline {self.step_deadline_ms:g} ms missed {self.deadline_misses}"
                if self.decision_mode == DecisionMode.INLINE
                else ""
            ),
            f"  commands      {top}",
            f"  risk          {risk}",
            f"  Kasmina       {self.applied:,} applied; refused: {refused}; rejected: {rejected}; "
            f"apply p95 {self.apply_ms_p95:.3f} ms, finalize p95 {self.finalize_ms_p95:.3f} ms",
            f"  isolation     {self.isolation_checks:,} checks, "
            f"{self.isolation_violations} violations",
            f"  seeds         {self.seeds_germinated} germinated, {self.seeds_fossilized} "
            f"fossilized, {self.seeds_culled} culled, {self.live_seeds} live at the end "
            f"({self.seed_parameters:,} parameters on a {self.host_parameters:,}-parameter host)",
        ]
        if self.no_growth:
            other = self.no_growth["final_val_accuracy"]
            out.append(
                f"  vs no growth  val {self.final_val_accuracy:.2%} against {other:.2%} "
                f"({(self.final_val_accuracy - other) * 100:+.2f} points) on the same data "
                f"and seed, with {self.seed_parameters:,} seed parameters "
                f"({self.seed_parameters / max(self.host_parameters, 1):.0%} of the host)"
            )
        out.extend(f"  {name:<13} {value}" for name, value in self.services.items())
        return out


def summarise(
    *,
    run_id: str,
    dataset: str,
    model: str,
    device: str,
    wall_s: float,
    recorder: RunRecorder,
    kasmina: Kasmina,
    tamiyo: Tamiyo,
    host_parameters: int,
    services: dict[str, str],
    policy: str = "",
    no_growth_val_accuracy: float | None = None,
) -> RunSummary:
    steps, epochs = recorder.steps, recorder.epochs
    decisions = recorder.decisions
    decided = [c for _, c in decisions if policy_decided(c)]
    controller = tamiyo.controller
    settings = controller.settings
    host_ms = sum(r.train_ms for r in steps)
    asked_ms = sum(r.decision_ms for r in steps if math.isfinite(r.decision_ms))
    tamiyo_cpu_ms = controller.worker.stats.cpu_ms + asked_ms
    commands = Counter(describe(c) for _, c in decisions)
    reasons = Counter(c.reason or "-" for _, c in decisions)
    categories = Counter(
        c.annotations["risk_category"] for _, c in decisions if "risk_category" in c.annotations
    )
    above_yellow = Counter(
        c.annotations.get("risk_signal", "-")
        for _, c in decisions
        if Category[c.annotations.get("risk_category", "GREEN")] > Category.YELLOW
    )
    to_stage = Counter(e.to_stage for e in kasmina.history)
    live = kasmina.live_seeds
    last = epochs[-1] if epochs else None
    return RunSummary(
        run_id=run_id,
        dataset=dataset,
        model=model,
        device=device,
        epochs=len(epochs),
        steps=len(steps),
        wall_s=wall_s,
        final_train_loss=last.train_loss if last else math.nan,
        final_val_loss=last.val_loss if last else math.nan,
        final_val_accuracy=last.val_accuracy if last else math.nan,
        best_val_accuracy=max((e.val_accuracy for e in epochs), default=math.nan),
        policy=policy or tamiyo.holder.current().architecture_id,
        decision_mode=settings.decision_mode.value,
        decisions=len(decisions),
        policy_decisions=len(decided),
        decision_age_steps=_percentiles([float(c.global_step - c.decision_step) for c in decided]),
        cadence_steps=controller.cadence.steps,
        decision_cost_ms=controller.cadence.decision_cost.value,
        tamiyo_share=tamiyo_cpu_ms / host_ms if host_ms > 0 else math.nan,
        decision_ms=_percentiles([r.decision_ms for r, _ in decisions]),
        step_deadline_ms=settings.step_deadline_ms,
        deadline_misses=reasons.get(InferenceOutcome.TIMED_OUT, 0),
        train_ms=_percentiles([r.train_ms for r in steps]),
        tamiyo_ms=_percentiles([r.tamiyo_ms for r in steps]),
        idle_step_ms=_percentiles([r.tamiyo_ms for r in steps if r.packet is None]),
        commands=dict(commands),
        reasons=dict(reasons),
        risk_categories=dict(sorted(categories.items())),
        risk_signals_above_yellow=dict(above_yellow.most_common()),
        applied=kasmina.stats.applied,
        refused=dict(kasmina.stats.refused),
        rejected=dict(kasmina.stats.rejected),
        apply_ms_p95=kasmina.apply_latency_p95_ms(),
        finalize_ms_p95=kasmina.finalize_latency_p95_ms(),
        isolation_checks=kasmina.stats.isolation_checks,
        isolation_violations=kasmina.stats.isolation_violations,
        seeds_germinated=to_stage[S.SEED_STAGE_GERMINATED],
        seeds_fossilized=to_stage[S.SEED_STAGE_FOSSILIZED],
        seeds_culled=to_stage[S.SEED_STAGE_CULLED],
        live_seeds=len(live),
        seed_parameters=sum(s.parameters for s in live),
        host_parameters=host_parameters,
        services=services,
        no_growth=(
            {} if no_growth_val_accuracy is None else {"final_val_accuracy": no_growth_val_accuracy}
        ),
    )
