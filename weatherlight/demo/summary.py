"""The run's figures, computed once at the end: printed, put in the report and written
as ``summary.json``."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.executor import Kasmina
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
    decisions: int
    policy_decisions: int  # decisions the policy made in time (not a deadline/breaker NO_OP)
    decision_ms: dict[str, float]
    step_deadline_ms: float
    deadline_misses: int  # decisions answered NO_OP because the deadline passed
    train_ms: dict[str, float]
    tamiyo_ms: dict[str, float]  # all Tamiyo and Kasmina add per step
    commands: dict[str, int]
    reasons: dict[str, int]
    risk_categories: dict[str, int]
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

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def lines(self) -> list[str]:
        d = self.decision_ms
        t = self.tamiyo_ms
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.commands.items(), key=lambda kv: -kv[1]))
        refused = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())) or "none"
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        risk = ", ".join(f"{k} {v}" for k, v in self.risk_categories.items()) or "-"
        out = [
            f"run {self.run_id}: {self.dataset} / {self.model} on {self.device}, "
            f"{self.epochs} epochs, {self.steps:,} steps in {self.wall_s:.1f} s",
            f"  accuracy      val {self.final_val_accuracy:.2%} "
            f"(best {self.best_val_accuracy:.2%}), val loss {self.final_val_loss:.4f}, "
            f"train loss {self.final_train_loss:.4f}",
            f"  decisions     {self.decisions:,} ({self.policy_decisions:,} by the policy in "
            f"time): p50 {d['p50']:.2f} ms, p95 {d['p95']:.2f} ms, "
            f"p99 {d['p99']:.2f} ms, max {d['max']:.2f} ms; deadline {self.step_deadline_ms:g} ms "
            f"missed {self.deadline_misses}",
            f"  step cost     training p50 {self.train_ms['p50']:.2f} ms; Tamiyo+Kasmina p50 "
            f"{t['p50']:.2f} ms, p95 {t['p95']:.2f} ms",
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
    host_parameters: int,
    step_deadline_ms: float,
    services: dict[str, str],
) -> RunSummary:
    steps, epochs = recorder.steps, recorder.epochs
    decisions = recorder.decisions
    commands = Counter(describe(c) for _, c in decisions)
    reasons = Counter(c.reason or "-" for _, c in decisions)
    categories = Counter(
        c.annotations["risk_category"] for _, c in decisions if "risk_category" in c.annotations
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
        decisions=len(decisions),
        policy_decisions=sum(policy_decided(c) for _, c in decisions),
        decision_ms=_percentiles([r.decision_ms for r, _ in decisions]),
        step_deadline_ms=step_deadline_ms,
        deadline_misses=reasons.get("timeout_inference", 0),
        train_ms=_percentiles([r.train_ms for r in steps]),
        tamiyo_ms=_percentiles([r.tamiyo_ms for r in steps]),
        commands=dict(commands),
        reasons=dict(reasons),
        risk_categories=dict(sorted(categories.items())),
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
    )
