"""Simic's learner: joined field experience -> PPO updates -> gated candidates.

One ``cycle`` (called from the service's learning thread):

1. join: pending decisions become complete (with their reward) or expire; reports
   whose decision never came are set aside (``simic.join``, ``simic.store``);
2. when at least ``batch_min_decisions`` trainable decisions are complete and the
   learning breaker is not open, one PPO update: every value is recomputed with the
   current critic, advantages by GAE over each run's chains of consecutive decisions
   (``simic.advantages``), and the fresh decisions train together with a sample of the
   replay (stored advantages and returns, behaviour log-probabilities); held-out
   decisions take part in the chains but are never trained on, and keep their return
   as the gate's target; the fresh trainable decisions then fill the replay;
3. every ``updates_per_candidate`` updates, the weights go through the validation gate
   against the running policy: passed, they become the running policy under a new
   version (recorded before the caller publishes it); rejected, the learner returns to
   the running weights with fresh optimiser moments, and the rejection is counted and
   evented.

Every step of an update goes through the LearningGuard (its breaker is the learning
breaker): while it is open the learner waits, and a refused update consumes nothing.
The state is checkpointed atomically after every update and candidate; a restart puts
back the decisions the checkpoint had not learnt from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import torch

from leyline_vocab.events import EventKind, event
from oona.breaker import BreakerState
from oona.events import EventSink, LogEventSink
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.guard import LearningGuard
from tamiyo_bus.learning.learner import PPOBatch, PPOLearner, PPOUpdateStats
from tamiyo_bus.learning.replay import GraphReplay, GraphTransition
from tamiyo_bus.learning.trainer import constant_lr, offline_guard
from tamiyo_bus.policy.features import NormalizerSnapshot
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.simic.advantages import chained_gae
from tamiyo_bus.simic.batch import Topologies, concatenated, replay_transition, transitions_of
from tamiyo_bus.simic.evaluation import SimEvaluator, held_out_figures, log_probs_and_values
from tamiyo_bus.simic.gate import GateVerdict, SimFigures, judge
from tamiyo_bus.simic.join import JoinWaits, join_run
from tamiyo_bus.simic.publishing import Candidate, next_version
from tamiyo_bus.simic.settings import LearnerSettings
from tamiyo_bus.simic.state import LearnerProgress, load_learner_state, save_learner_state
from tamiyo_bus.simic.store import Consumed, ExperienceStore, StoredDecision
from tamiyo_bus.tolaria.lr import LRController

log = logging.getLogger(__name__)
POLICY_ID = "simic-learner"
_PRUNE_INTERVAL_S = 600.0


class Waiting(StrEnum):
    """What the learner waits for before its next update."""

    EXPERIENCE = "experience"  # too few complete decisions
    REPORTS = "reports"  # acted decisions wait for their field reports
    BREAKER = "breaker"  # the learning breaker is open


@dataclass(frozen=True, slots=True)
class LearnerHealth:
    waiting_for: tuple[Waiting, ...]
    ready_decisions: int  # complete, trainable, not yet learnt from
    awaiting_reports: int
    awaiting_successors: int
    updates: int
    policy_version: int


@dataclass(frozen=True, slots=True)
class LearnerStats:
    """After an update (``ppo``) or a candidate (``verdict``): what telemetry shows."""

    progress: LearnerProgress
    experience: dict[str, int]
    replay_fill: float  # live items / capacity
    ppo: PPOUpdateStats | None = None
    fresh_decisions: int = 0
    replay_decisions: int = 0
    verdict: GateVerdict | None = None


LearnerSink = Callable[[LearnerStats], None]


@dataclass
class _Pending:
    reports: int = 0
    successors: int = 0


@dataclass
class CycleResult:
    update: PPOUpdateStats | None = None
    verdict: GateVerdict | None = None
    candidate: Candidate | None = None
    waiting_for: tuple[Waiting, ...] = field(default_factory=tuple)


class SimicLearner:
    """The learner's state and its cycle; IO only through the store and its files."""

    def __init__(
        self,
        settings: LearnerSettings,
        store: ExperienceStore,
        policy: ReferencePolicy,
        *,
        normalizer: NormalizerSnapshot | None = None,
        start_version: int = 0,
        guard: LearningGuard | None = None,
        events: EventSink | None = None,
        sink: LearnerSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = s = settings
        self.store = store
        self.policy = policy
        self.running = ReferencePolicy(policy.config)
        self.running.load_state_dict(policy.state_dict())
        self.running.eval()
        self.normalizer = normalizer
        self.events: EventSink = events or LogEventSink()
        self.sink = sink
        self.clock = clock
        self.topologies = Topologies(store)
        self.lr = LRController(constant_lr(s.base_lr))
        self.guard = guard or offline_guard(s.ppo.max_grad_norm)
        self.ppo = PPOLearner(
            GraphPolicyEvaluator(policy),
            self.guard,
            self.lr,
            s.ppo,
            generator=torch.Generator().manual_seed(s.seed),
        )
        self.replay = GraphReplay(s.replay, seed=s.seed, clock=clock)
        self.progress = LearnerProgress(running_version=start_version)
        self.replay_refused = 0  # decisions the replay's rows could not hold
        self._sim: SimEvaluator | None = None
        self._running_return: tuple[int, float] | None = None
        self._pending = _Pending()
        self._last_prune_s = -math.inf
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._restore()

    # ------------------------------------------------------------------ state

    def _restore(self) -> None:
        path = self.settings.checkpoint_path
        if path.exists():
            progress, normalizer = load_learner_state(
                path.read_bytes(),
                policy=self.policy,
                running=self.running,
                optimizer=self.ppo.optimizer,
            )
            self.progress = progress
            observed = any(count.any() for count in normalizer.count.values())
            self.normalizer = normalizer if observed else None  # never fitted: fit again
            self.lr.step = progress.lr_step
            released = self.store.release_after(progress.batches)
            log.info("learner resumed at update %d (%d decisions put back)",
                     progress.updates, released)  # fmt: skip
        if self.settings.replay_path.exists():
            try:
                self.replay.load(self.settings.replay_path)
            except Exception as error:  # corrupt, or of another capacity: a cache, not state
                log.warning("replay not restored, starting empty: %s", error)
                self.replay = GraphReplay(self.settings.replay, seed=self.settings.seed,
                                          clock=self.clock)  # fmt: skip

    def save(self) -> None:
        self.progress.lr_step = self.lr.step
        save_learner_state(
            self.settings.checkpoint_path,
            policy=self.policy,
            running=self.running,
            optimizer=self.ppo.optimizer,
            normalizer=self.normalizer or NormalizerSnapshot.initial(),
            progress=self.progress,
            policy_id=POLICY_ID,
        )

    def save_replay(self) -> None:
        self.replay.save(self.settings.replay_path)

    # ------------------------------------------------------------------ cycle

    def cycle(self) -> CycleResult:
        now_s = self.clock()
        self.join(now_s)
        trainable, _ = self.store.ready()
        waiting = self._waiting(trainable)
        if waiting:
            return CycleResult(waiting_for=waiting)
        decisions = self.store.complete_decisions(self.settings.batch_max_decisions)
        result = CycleResult(update=self.update(decisions))
        applied = result.update is not None and result.update.refused is None
        if applied and self.progress.updates % self.settings.updates_per_candidate == 0:
            result.verdict, result.candidate = self.propose()
        return result

    def _waiting(self, trainable: int) -> tuple[Waiting, ...]:
        waiting = []
        if self.guard.breaker.state is BreakerState.OPEN:
            waiting.append(Waiting.BREAKER)
        if trainable < self.settings.batch_min_decisions:
            waiting.append(Waiting.EXPERIENCE)
            if self._pending.reports:
                waiting.append(Waiting.REPORTS)
        return tuple(waiting)

    def health(self) -> LearnerHealth:
        trainable, _ = self.store.ready()
        return LearnerHealth(
            waiting_for=self._waiting(trainable),
            ready_decisions=trainable,
            awaiting_reports=self._pending.reports,
            awaiting_successors=self._pending.successors,
            updates=self.progress.updates,
            policy_version=self.progress.running_version,
        )

    def join(self, now_s: float) -> None:
        s = self.settings
        waits = JoinWaits(s.report_wait_s, s.successor_wait_s, s.refused_after_end_s)
        pending = _Pending()
        for run, chain, end in self.store.pending_chains():
            joined = join_run(chain, end, now_s=now_s, waits=waits, reward_settings=s.reward)
            if joined.completed or joined.expired:
                self.store.apply_join(run, joined.completed, joined.expired)
            settled = {c.decision_step for c in joined.completed}
            settled.update(step for step, _ in joined.expired)
            for facts in chain:
                if facts.pending and facts.decision_step not in settled:
                    if facts.acted and facts.report_terms is None:
                        pending.reports += 1
                    else:
                        pending.successors += 1
        self._pending = pending
        self.store.expire_unmatched_reports(now_s=now_s, wait_s=s.report_wait_s)
        if now_s - self._last_prune_s >= _PRUNE_INTERVAL_S:
            self.store.prune(now_s=now_s, retain_s=s.retain_s)
            self._last_prune_s = now_s

    # ----------------------------------------------------------------- update

    def update(self, decisions: Sequence[StoredDecision]) -> PPOUpdateStats | None:
        """One PPO update on ``decisions`` (complete, in run and step order) and a
        replay sample; None when none of them is trainable."""
        n = len(decisions)
        continues = np.zeros(n, np.bool_)
        for i in range(n - 1):
            d = decisions[i]
            continues[i] = d.next_step is not None and decisions[i + 1].key == (
                d.training_run_id,
                d.next_step,
            )
        wanted = [
            (d.training_run_id, d.next_step)
            for i, d in enumerate(decisions)
            if not continues[i] and d.next_step is not None
        ]
        successors = self.store.decisions_at(wanted)
        ordered = list(successors.values())
        inputs = transitions_of([*decisions, *ordered], self.topologies)
        _, values = log_probs_and_values(self.policy, inputs)
        successor_value = {d.key: float(v) for d, v in zip(ordered, values[n:], strict=True)}
        bootstrap = np.zeros(n, np.float32)
        terminal = np.zeros(n, np.bool_)
        for i, d in enumerate(decisions):
            key = (d.training_run_id, d.next_step) if d.next_step is not None else None
            if continues[i]:
                continue
            if key is None or key not in successor_value:  # run ended, or pruned: no future
                terminal[i] = True
            else:
                bootstrap[i] = successor_value[key]
        rewards = np.array([d.reward for d in decisions], np.float32)
        value = values[:n].numpy()
        gae = chained_gae(rewards, value, continues, bootstrap, terminal, self.settings.gae)
        train = [i for i, d in enumerate(decisions) if not d.held_out]
        if not train:
            self._consume(decisions, gae.returns)
            return None
        stats, replayed = self._learn(
            [decisions[i] for i in train], value[train], gae.advantages[train], gae.returns[train]
        )
        if stats.refused is not None:
            return stats
        self._fill_replay(decisions, train, value, gae.advantages, gae.returns)
        self._consume(decisions, gae.returns)
        self.progress.updates += 1
        self.replay.expire(now_step=0, policy_version=self.progress.running_version)
        self.save()
        if self.progress.updates % self.settings.replay_save_every_updates == 0:
            self.save_replay()
        self._emit(LearnerStats(
            replace(self.progress), self.store.counts(), self.replay_fill, stats, len(train),
            replayed,
        ))  # fmt: skip
        return stats

    def _learn(
        self,
        fresh: Sequence[StoredDecision],
        values: np.ndarray,
        advantages: np.ndarray,
        returns: np.ndarray,
    ) -> tuple[PPOUpdateStats, int]:
        """PPO on the fresh decisions plus a replay sample (drawn before they enter)."""
        inputs = transitions_of(fresh, self.topologies)
        columns = {
            "log_prob": torch.tensor([d.step.behaviour_log_prob for d in fresh]),
            "value": torch.from_numpy(values),
            "advantage": torch.from_numpy(advantages),
            "returns": torch.from_numpy(returns),
        }
        k = self.settings.replay_sample_decisions
        replayed = 0
        if k and len(self.replay) >= k:
            sample = self.replay.sample(k)
            inputs = concatenated(inputs, sample.transitions)
            columns = {n: torch.cat((c, sample.columns[n].float())) for n, c in columns.items()}
            replayed = k
        batch = PPOBatch(
            inputs, columns["log_prob"], columns["value"], columns["advantage"], columns["returns"]
        )
        return self.ppo.update(batch), replayed

    def _fill_replay(
        self,
        decisions: Sequence[StoredDecision],
        train: Sequence[int],
        values: np.ndarray,
        advantages: np.ndarray,
        returns: np.ndarray,
    ) -> None:
        """One write per topology: a write of many new placements would have the
        replay's table of topologies make room by dropping ones the same write needs."""
        by_topology: dict[str, list[GraphTransition]] = {}
        for i in train:
            d = decisions[i]
            by_topology.setdefault(d.topology, []).append(
                replay_transition(
                    d,
                    self.topologies.get(d.topology),
                    value=float(values[i]),
                    advantage=float(advantages[i]),
                    returns=float(returns[i]),
                )
            )
        for items in by_topology.values():
            try:
                self.replay.add(items)
            except ValueError as error:  # a graph larger than the replay's rows
                self.replay_refused += len(items)
                log.warning("replay refused %d decisions: %s", len(items), error)

    def _consume(self, decisions: Sequence[StoredDecision], returns: np.ndarray) -> None:
        self.progress.batches += 1
        self.store.mark_used(
            [
                Consumed(d.key, float(returns[i]) if d.held_out else None)
                for i, d in enumerate(decisions)
            ],
            self.progress.batches,
        )

    @property
    def replay_fill(self) -> float:
        return len(self.replay) / self.replay.storage.capacity

    # -------------------------------------------------------------- candidates

    def propose(self) -> tuple[GateVerdict | None, Candidate | None]:
        """Judge the current weights against the running policy; the candidate to
        publish when they pass (its version already recorded)."""
        s, p = self.settings, self.progress
        held = self.store.held_out_decisions(s.held_out_max_decisions)
        if len(held) < s.gate.min_held_out_decisions:
            p.candidates_deferred += 1
            return None, None
        targets = torch.tensor([d.target_return for d in held], dtype=torch.float32)
        figures = held_out_figures(
            self.running, self.policy, transitions_of(held, self.topologies), targets
        )
        sim = self._sim_figures() if s.gate.sim_evaluation else None
        verdict = judge(figures, sim, s.gate)
        detail: dict[str, str | int | float] = {
            "running_version": p.running_version,
            "held_out": figures.decisions,
            "kl": round(figures.kl, 6),
            "value_error": round(figures.candidate_value_error, 6),
            "running_value_error": round(figures.running_value_error, 6),
        }
        if sim is not None:
            detail.update(sim_return=round(sim.candidate_return, 4),
                          running_sim_return=round(sim.running_return, 4))  # fmt: skip
        candidate = None
        if verdict.passed:
            p.seen_version = max(p.seen_version, self.store.max_policy_version())
            version = next_version(p.published_version, max(p.seen_version, p.running_version))
            self.running.load_state_dict(self.policy.state_dict())
            p.running_version = p.published_version = version
            p.candidates_published += 1
            p.rejected_in_row = 0
            if sim is not None:
                self._running_return = (version, sim.candidate_return)
            candidate = Candidate(
                {k: v.detach().clone() for k, v in self.policy.state_dict().items()}, version
            )
            self.events.emit(event(EventKind.POLICY_CANDIDATE_PUBLISHED, version=version, **detail))
        else:
            p.candidates_rejected += 1
            p.rejected_in_row += 1
            self.policy.load_state_dict(self.running.state_dict())
            self.ppo.optimizer.state.clear()
            reasons = ",".join(verdict.rejections)
            self.events.emit(event(EventKind.POLICY_CANDIDATE_REJECTED, reasons=reasons, **detail))
        self.save()
        self._emit(LearnerStats(replace(p), self.store.counts(), self.replay_fill,
                                verdict=verdict))  # fmt: skip
        return verdict, candidate

    def undelivered(self) -> Candidate | None:
        """The running policy when its version was recorded but never reached the bus
        (a crash between the two): it is published again."""
        p = self.progress
        if p.published_version <= p.delivered_version:
            return None
        weights = {k: v.detach().clone() for k, v in self.running.state_dict().items()}
        return Candidate(weights, p.published_version)

    def delivered(self, candidate: Candidate) -> None:
        self.progress.delivered_version = max(self.progress.delivered_version, candidate.version)
        self.save()

    def _sim_figures(self) -> SimFigures:
        if self._sim is None:
            self._sim = SimEvaluator(self.settings.gate, self.normalizer)
            if self.normalizer is None:
                self.normalizer = self._sim.normalizer
        version = self.progress.running_version
        if self._running_return is None or self._running_return[0] != version:
            self._running_return = (version, self._sim.mean_return(self.running))
        return SimFigures(self._running_return[1], self._sim.mean_return(self.policy))

    def _emit(self, stats: LearnerStats) -> None:
        if self.sink is not None:
            self.sink(stats)
