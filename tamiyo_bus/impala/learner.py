"""The V-trace learner (no IO): one optimiser step per batch of segments, and every
``updates_per_publish`` updates a candidate through Simic's validation gate.

Every step goes through the LearningGuard (grad clip, the learning breaker, conservative
mode) with the rate owned by an LRController. A refused step (breaker open, paused)
consumes nothing: the caller keeps the batch for later. A failed one (non-finite, or
raising) drops the batch, which the breaker counts. While the breaker is open no
candidate is proposed.

On several ranks (``impala.distributed``) every rank calls ``update`` in step, with
its own share of the segments (possibly none), and the ranks agree before any acts:
before the step, whether any rank's guard refuses (then every rank refuses and keeps
its batch); after the forward and before the backward, whether any rank's loss failed
or is not finite (then every rank fails the step, and every breaker counts it). DDP
synchronises the gradients in the backward; each rank's loss is scaled by its share of
the transitions (times the number of ranks, which DDP divides by), so every rank clips
and steps on the gradient of the ranks' segments together, all keep the same weights,
and every guard sees the same outcome. A rank without segments takes part with its
previous batch at weight zero; until every rank has had a batch, the ranks do not step
(the update is refused as paused and the batches kept). Only the lead rank runs the
gate; its verdict reaches every rank, which then all keep (passed) or drop (rejected:
back to the running weights, fresh optimiser moments) the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind, event
from oona.breaker import BreakerState
from oona.events import EventSink, LogEventSink
from tamiyo_bus.impala.batch import SegmentBatch, TopologyCache, segment_batch, trained_steps
from tamiyo_bus.impala.distributed import (
    RankInfo,
    align_with_lead,
    data_parallel,
    from_lead,
    max_across,
    sum_across,
    sum_floats_across,
)
from tamiyo_bus.impala.loss import (
    AdvantageMoments,
    VTraceInputs,
    VTraceLoss,
    vtrace_loss,
    vtrace_targets,
)
from tamiyo_bus.impala.settings import ImpalaSettings
from tamiyo_bus.impala.validation import HeldOutSegments, figures_on
from tamiyo_bus.learning.guard import LearningGuard, LearningOutcome, LearningStepResult
from tamiyo_bus.learning.trainer import constant_lr, offline_guard
from tamiyo_bus.learning.vtrace import VTraceTargets
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.sim.actor import actor_statistics
from tamiyo_bus.simic.evaluation import SimEvaluator
from tamiyo_bus.simic.gate import GateVerdict, SimFigures, judge
from tamiyo_bus.simic.publishing import Candidate, next_version
from tamiyo_bus.tolaria.lr import LRController

POLICY_ID = "impala-learner"
_REFUSALS = frozenset({LearningOutcome.PAUSED, LearningOutcome.BREAKER_OPEN})
_DEFERRED, _PASSED, _REJECTED = 0, 1, 2


@dataclass
class ImpalaProgress:
    """The learner's counters (checkpointed)."""

    updates: int = 0  # applied optimiser steps
    failed_updates: int = 0  # non-finite or raising: the batch was dropped
    transitions_learnt: int = 0  # every rank's together
    segments_learnt: int = 0  # every rank's together
    candidates_published: int = 0
    candidates_rejected: int = 0
    candidates_deferred: int = 0  # too few held-out decisions to judge
    running_version: int = 0  # of the running (last published, or start) weights
    seen_version: int = 0  # the highest policy version in the experience


@dataclass(frozen=True, slots=True)
class ImpalaUpdateStats:
    outcome: LearningOutcome
    segments: int  # this rank's
    transitions: int  # learnt from, every rank's together
    total_loss: float = math.nan
    policy_loss: float = math.nan
    value_loss: float = math.nan
    entropy: float = math.nan
    mean_rho: float = math.nan  # 1.0 on-policy; lower: the actors lag the learner
    grad_norm: float = math.nan  # before clipping
    learning_rate: float = math.nan
    duration_s: float = 0.0  # the losses, rho and duration are this rank's
    verdict: GateVerdict | None = None  # when this update was a K-th
    candidate: Candidate | None = None  # passed: the weights to publish (lead rank)

    @property
    def refused(self) -> bool:
        """Nothing was consumed: the same segments may be offered again."""
        return self.outcome in _REFUSALS


@dataclass
class _Gate:
    held_out: HeldOutSegments
    sim: SimEvaluator | None = None
    running_return: tuple[int, float] | None = None  # (version, mean return)
    normalizer: NormalizerSnapshot | None = field(default=None)


class _BatchNetwork(nn.Module):
    """The policy evaluating a whole batch in its forward, so DDP sees each pass."""

    def __init__(self, policy: ReferencePolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: SegmentBatch) -> VTraceInputs:
        return batch.evaluate(self.policy)


def _zero_weight(inputs: VTraceInputs) -> Tensor:
    """Zero, through every output of the network: a backward of it gives every
    parameter a zero gradient (the network's outputs only, so a batch whose rewards were
    not finite still gives a finite zero)."""
    return (inputs.log_probs.sum() + inputs.entropies.sum() + inputs.values.sum()) * 0.0


class ImpalaLearner:
    def __init__(
        self,
        settings: ImpalaSettings,
        policy: ReferencePolicy,
        *,
        rank: RankInfo | None = None,
        normalizer: NormalizerSnapshot | None = None,
        start_version: int = 0,
        guard: LearningGuard | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.settings = s = settings
        self.rank = rank or RankInfo()
        self.policy = policy
        self.device = next(policy.parameters()).device
        self.network = data_parallel(_BatchNetwork(policy), self.rank)
        self._previous: SegmentBatch | None = None  # a starved rank's zero-weight pass
        self.running = ReferencePolicy(policy.config).to(self.device)
        self.running.load_state_dict(policy.state_dict())
        self.running.eval()
        self.guard = guard or offline_guard(s.max_grad_norm)
        self.lr = LRController(constant_lr(s.base_lr))
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=self.lr.learning_rate)
        self.lr.attach(self.optimizer, 1.0)
        self.events: EventSink = events or LogEventSink()
        self.progress = ImpalaProgress(running_version=start_version)
        self.topologies = TopologyCache()
        self._gate = _Gate(
            HeldOutSegments(
                s.held_out_max_segments, behaviour_bootstrap=s.loss.behaviour_bootstrap
            ),
            # the actors' statistics: the gate's runs show candidates the features the
            # segments were decided on, not statistics fitted to other episodes
            normalizer=normalizer if normalizer is not None else actor_statistics(),
        )

    def hold_out(self, segment: pb.Trajectory) -> None:
        """Keep ``segment`` for the gate (it is never trained on)."""
        self._gate.held_out.add(segment)

    def align_ranks(self) -> None:
        """Every rank starts from the lead's weights; ranks that resumed from different
        checkpoints (RuntimeError on every rank) would not learn as one."""
        if not self.rank.distributed:
            return
        lead_updates = from_lead([self.progress.updates], self.rank, self.device)[0]
        apart = sum_across([int(lead_updates != self.progress.updates)], self.rank, self.device)
        if apart[0]:
            raise RuntimeError("the ranks resumed from different checkpoints")
        tensors = [*self.policy.state_dict().values(), *self.running.state_dict().values()]
        align_with_lead(tensors, self.rank)

    def update(self, segments: Sequence[pb.Trajectory]) -> ImpalaUpdateStats:
        """One optimiser step on ``segments`` (on several ranks, every rank's share;
        segments without a step to learn from are consumed as they are)."""
        started = time.perf_counter()
        carried = self.settings.loss.behaviour_bootstrap
        learnt = [s for s in segments if trained_steps(s, behaviour_bootstrap=carried) > 0]
        batch = (
            segment_batch(learnt, self.topologies, behaviour_bootstrap=carried) if learnt else None
        )
        here = batch.transitions if batch is not None else 0
        refusal = self.guard.refusal()
        unready = batch is None and self._previous is None
        paused, closed, transitions, offered, waiting = sum_across(
            [
                int(refusal is LearningOutcome.PAUSED),
                int(refusal is LearningOutcome.BREAKER_OPEN),
                here,
                len(segments),
                int(unready),
            ],
            self.rank,
            self.device,
        )
        if paused or closed:
            outcome = LearningOutcome.PAUSED if paused else LearningOutcome.BREAKER_OPEN
            return ImpalaUpdateStats(outcome, 0, 0)
        if transitions == 0:
            return ImpalaUpdateStats(LearningOutcome.APPLIED, len(segments), 0)
        if waiting:  # a rank has never had a batch: it could not take part in the pass
            return ImpalaUpdateStats(LearningOutcome.PAUSED, 0, 0)
        # DDP divides the summed gradients by the ranks: this makes them the gradient of
        # the ranks' segments together (a rank without segments weighs nothing).
        weight = self.rank.world_size * here / transitions
        losses: list[VTraceLoss] = []
        self.policy.train()
        result = self.guard.step(self.optimizer, lambda: self._agreed_loss(batch, weight, losses))
        if batch is not None:
            self._previous = batch
        if result.outcome in _REFUSALS:
            self._refused_after_agreeing()
            return ImpalaUpdateStats(result.outcome, 0, 0)
        p = self.progress
        if not result.applied:
            p.failed_updates += 1
            return ImpalaUpdateStats(result.outcome, len(segments), 0)
        self.lr.advance()
        p.updates += 1
        p.transitions_learnt += transitions
        p.segments_learnt += offered
        seen = max((s.policy_version for s in segments), default=0)
        p.seen_version = max(p.seen_version, max_across(seen, self.rank, self.device))
        verdict, candidate = None, None
        if p.updates % self.settings.updates_per_publish == 0:
            verdict, candidate = self.propose()
        return _applied(result, len(segments), transitions, losses, self.lr.learning_rate,
                        time.perf_counter() - started, verdict, candidate)  # fmt: skip

    def _agreed_loss(
        self, batch: SegmentBatch | None, weight: float, losses: list[VTraceLoss]
    ) -> Tensor:
        """This rank's loss, times ``weight``, once every rank computed its own: NaN on
        every rank when any rank's is not finite, raising on every rank when any rank's
        raised, so that no rank runs a backward the others skip. A rank without segments
        passes its previous batch at weight zero: its gradients are zero, and DDP's
        backward runs on every rank. Every rank takes part in two collectives, in this
        order: the advantages' moments, then the agreement on the loss."""
        failure: Exception | None = None
        loss: Tensor = torch.zeros((), device=self.device)
        evaluated: tuple[VTraceInputs, VTraceTargets] | None = None
        try:
            if batch is not None:
                inputs: VTraceInputs = self.network(batch)
                evaluated = (inputs, vtrace_targets(inputs, self.settings.loss.vtrace))
            else:
                assert self._previous is not None  # the ranks wait until every rank has one
                loss = _zero_weight(self.network(self._previous))
        except Exception as error:  # every rank must hear of it before it is raised
            failure = error
        mine = AdvantageMoments() if evaluated is None else AdvantageMoments.of(*evaluated)
        moments = self._moments_across(mine)
        if evaluated is not None:
            inputs, targets = evaluated
            try:
                losses.append(vtrace_loss(inputs, self.settings.loss, targets, moments))
                loss = losses[-1].total * weight
            except Exception as error:
                failure = error
        finite = failure is not None or math.isfinite(float(loss.detach()))
        refused, failed, not_finite = sum_across(
            [0, int(failure is not None), int(not finite)], self.rank, self.device
        )
        if failure is not None:
            raise failure
        if refused or failed:
            raise RuntimeError("the step failed on another rank")
        if not_finite:
            return torch.full((), math.nan, device=self.device)
        return loss

    def _refused_after_agreeing(self) -> None:
        """A guard that refused after the ranks agreed to step (conservative mode or the
        breaker changed in between) still answers the loss's collectives, so the others
        fail the step rather than wait for this rank."""
        self._moments_across(AdvantageMoments())
        sum_across([1, 0, 0], self.rank, self.device)

    def _moments_across(self, mine: AdvantageMoments) -> AdvantageMoments:
        count, total, squares = sum_floats_across(
            [mine.count, mine.total, mine.squares], self.rank, self.device
        )
        return AdvantageMoments(count, total, squares)

    # ------------------------------------------------------------------ gate

    def propose(self) -> tuple[GateVerdict | None, Candidate | None]:
        """The gate on the lead rank; every rank then keeps or drops the weights."""
        verdict = self._judge() if self.rank.lead else None
        code = _DEFERRED if verdict is None else (_PASSED if verdict.passed else _REJECTED)
        p = self.progress
        version = next_version(p.running_version, p.seen_version)
        code, version = from_lead([code, version], self.rank, self.device)
        if code == _DEFERRED:
            p.candidates_deferred += 1
            return verdict, None
        detail: dict[str, str | int | float] = {"learner": POLICY_ID, "updates": p.updates}
        if code == _REJECTED:
            p.candidates_rejected += 1
            self.policy.load_state_dict(self.running.state_dict())
            self.optimizer.state.clear()
            reasons = ",".join(verdict.rejections) if verdict is not None else ""
            if self.rank.lead:
                self.events.emit(
                    event(EventKind.POLICY_CANDIDATE_REJECTED, reasons=reasons, **detail)
                )
            return verdict, None
        p.candidates_published += 1
        p.running_version = version
        self.running.load_state_dict(self.policy.state_dict())
        if not self.rank.lead:
            return verdict, None
        self.events.emit(event(EventKind.POLICY_CANDIDATE_PUBLISHED, version=version, **detail))
        weights = {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()}
        return verdict, Candidate(weights, version)

    def _judge(self) -> GateVerdict | None:
        """None: deferred (the breaker is open, or too few held-out decisions)."""
        gate, s = self._gate, self.settings
        if self.guard.breaker.state is BreakerState.OPEN:
            return None
        if gate.held_out.decisions < s.gate.min_held_out_decisions:
            return None
        self.policy.eval()
        try:
            held = figures_on(
                gate.held_out.segments(), self.running, self.policy, self.topologies, s.loss,
            )  # fmt: skip
            sim = self._sim_figures() if s.gate.sim_evaluation else None
        finally:
            self.policy.train()
        return judge(held, sim, s.gate)

    def _sim_figures(self) -> SimFigures:
        gate = self._gate
        if gate.sim is None:
            gate.sim = SimEvaluator(self.settings.gate, gate.normalizer)
        version = self.progress.running_version
        if gate.running_return is None or gate.running_return[0] != version:
            gate.running_return = (version, gate.sim.mean_return(self.running))
        return SimFigures(gate.running_return[1], gate.sim.mean_return(self.policy))

    @property
    def breaker_open(self) -> bool:
        return self.guard.breaker.state is BreakerState.OPEN


def _applied(
    result: LearningStepResult,
    segments: int,
    transitions: int,
    losses: Sequence[VTraceLoss],
    learning_rate: float,
    duration_s: float,
    verdict: GateVerdict | None,
    candidate: Candidate | None,
) -> ImpalaUpdateStats:
    if not losses:  # this rank had no segment: the step was the others'
        return ImpalaUpdateStats(
            result.outcome, segments, transitions, grad_norm=result.grad_norm or math.nan,
            learning_rate=learning_rate, duration_s=duration_s, verdict=verdict,
            candidate=candidate,
        )  # fmt: skip
    loss = losses[-1]
    return ImpalaUpdateStats(
        result.outcome, segments, transitions,
        float(loss.total.detach()), float(loss.policy.detach()), float(loss.value.detach()),
        float(loss.entropy.detach()), loss.mean_rho, result.grad_norm or math.nan,
        learning_rate, duration_s, verdict, candidate,
    )  # fmt: skip
