"""The step path's experience: each policy decision, encoded off the step path.

The step path hands over the (immutable) decision and what became of it, without
waiting: a bounded queue, drained by one background thread that encodes the graph and
groups decisions into segments (tamiyo_bus.experience.segments). Each closed segment
goes to ``sink`` (the app publishes it on the trajectories stream). Only decisions the
policy made are experience: a NO_OP the step answered because the policy did not
decide (late, busy, refused) is no choice of the policy's and teaches it nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.decision import PolicyDecision
from tamiyo_bus.experience.segments import ExperienceSettings, Segmenter
from tamiyo_bus.experience.steps import StepOutcome, trajectory_step
from tamiyo_bus.learning.replay.codec import Topology
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.structure import GraphStructure
from tamiyo_bus.worker import DropRule, QueueWorker

TrajectorySink = Callable[[pb.Trajectory], None]
_TOPOLOGIES_KEPT = 8  # structures seen lately (a run changes its graph when seeds move)


@dataclass(frozen=True, slots=True)
class _Decided:
    training_run_id: str
    decision: PolicyDecision
    outcome: StepOutcome


@dataclass(frozen=True, slots=True)
class _RunEnd:
    training_run_id: str
    progress: Progress


@dataclass(frozen=True, slots=True)
class _Flush:
    pass


_Item = _Decided | _RunEnd | _Flush


class ExperienceRecorder:
    """``record`` and ``end_run`` never block; ``start`` before the first step."""

    def __init__(
        self,
        settings: ExperienceSettings,
        sink: TrajectorySink,
        *,
        actor_id: str,
        publishing_allowed: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        linger_ms: float = 0.0,
    ) -> None:
        self.settings = settings
        self.segments = Segmenter(settings, actor_id)
        self.published = 0  # segments handed to the sink
        self.withheld = 0  # decisions not recorded while publishing was not allowed
        self._publishing_allowed = publishing_allowed
        self._sink = sink
        self._clock = clock
        self._topologies: OrderedDict[int, tuple[GraphStructure, Topology]] = OrderedDict()
        self.worker: QueueWorker[_Item] = QueueWorker(
            "tamiyo-experience",
            capacity=settings.queue_max_decisions,
            drop=DropRule.DROP_NEWEST,
            handle_batch=self._handle,
            linger_ms=linger_ms,
        )

    def start(self) -> None:
        self.worker.start()

    def close(self, timeout_s: float) -> bool:
        """Hand over every open segment, then stop the thread; False if the queue did
        not drain within ``timeout_s``."""
        self.worker.submit(_Flush())
        drained = self.worker.wait_idle(timeout_s)
        return self.worker.close() and drained

    def record(self, training_run_id: str, decision: PolicyDecision, outcome: StepOutcome) -> bool:
        """Queue one decision of the policy's; False when the queue refused it, or when
        publishing is not allowed (conservative mode: a run in trouble teaches the
        learner its trouble, not the policy's choices)."""
        if not self._publishing_allowed():
            self.withheld += 1
            return False
        return self.worker.submit(_Decided(training_run_id, decision, outcome))

    def end_run(self, training_run_id: str, progress: Progress) -> bool:
        """The run ended where ``progress`` says: its last segment goes out marked so."""
        return self.worker.submit(_RunEnd(training_run_id, progress))

    def wait_idle(self, timeout_s: float) -> bool:
        return self.worker.wait_idle(timeout_s)

    def _topology(self, structure: GraphStructure) -> Topology:
        known = self._topologies.get(id(structure))
        if known is not None:
            self._topologies.move_to_end(id(structure))
            return known[1]
        topology = Topology(structure)
        self._topologies[id(structure)] = (structure, topology)  # holding it keeps the id
        while len(self._topologies) > _TOPOLOGIES_KEPT:
            self._topologies.popitem(last=False)
        return topology

    def _handle(self, items: Sequence[_Item]) -> None:
        now = self._clock()
        closed = self.segments.expire(now_s=now)
        for item in items:
            if isinstance(item, _Decided):
                closed.extend(self._add(item, now))
            elif isinstance(item, _RunEnd):
                closed.append(self.segments.end_run(item.training_run_id, item.progress))
            else:
                closed.extend(self.segments.flush())
        for segment in closed:
            self._sink(segment)
            self.published += 1

    def _add(self, item: _Decided, now_s: float) -> list[pb.Trajectory]:
        decision = item.decision
        topology = self._topology(decision.graph.structure)
        inference = decision.inference
        step = trajectory_step(
            topology,
            decision.graph,
            inference.action,
            log_prob=inference.log_prob,
            value=inference.value,
            policy_version=decision.policy_version,
            decision_step=decision.step,
            progress=decision.progress,
            outcome=item.outcome,
        )
        return self.segments.add(
            item.training_run_id, topology, decision.architecture_id, step, now_s=now_s
        )
