"""Decisions of one run grouped into Trajectory segments (pure: the clock is passed in).

A segment holds consecutive decisions of one run that share a graph structure, so the
structure travels once per segment instead of once per decision. A segment closes
when it is full (``segment_max_steps``), when the run's structure changes (a seed
placement changed the graph), when it has waited ``segment_max_age_s`` (the learner
should not wait on a slow run), and when the run ends: that last segment says so and
carries where the run stood at its end, which the learner needs to reward the run's
last decision. A run that ends with no segment open still gets one, with no steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.experience.steps import progress_message, topology_message
from tamiyo_bus.learning.replay.codec import Topology
from tamiyo_bus.learning.reward import Progress


@dataclass(frozen=True)
class ExperienceSettings:
    """Tamiyo's experience for the learner (the trajectories stream); units in the names."""

    enabled: bool = True
    # decisions waiting for the encoder thread; past it the newest is refused (counted)
    queue_max_decisions: int = 1024
    segment_max_steps: int = 20  # the unroll length of an actor's segment
    segment_max_age_s: float = 30.0
    # encoded segments waiting for the bus (an outage); past it the oldest is dropped
    publish_queue_max_segments: int = 256
    publish_retry_base_ms: float = 100.0
    publish_retry_max_ms: float = 5_000.0

    def __post_init__(self) -> None:
        if min(self.queue_max_decisions, self.segment_max_steps) < 1:
            raise ValueError("queue_max_decisions and segment_max_steps must be >= 1")
        if self.publish_queue_max_segments < 1 or not self.segment_max_age_s > 0:
            raise ValueError("publish_queue_max_segments >= 1 and segment_max_age_s > 0")


def trajectory_id(training_run_id: str, first_decision_step: int | None) -> str:
    """Stable for the same decisions, so a republished segment is known as such."""
    tail = "end" if first_decision_step is None else str(first_decision_step)
    return f"{training_run_id}/{tail}"


@dataclass
class _Open:
    topology: Topology
    architecture_id: str
    opened_s: float
    steps: list[pb.TrajectoryStep] = field(default_factory=list)


class Segmenter:
    """The open segment of every run; each call returns the segments it closed."""

    def __init__(self, settings: ExperienceSettings, actor_id: str) -> None:
        self.settings = settings
        self.actor_id = actor_id
        self._open: dict[str, _Open] = {}

    @property
    def open_steps(self) -> int:
        return sum(len(o.steps) for o in self._open.values())

    def add(
        self,
        training_run_id: str,
        topology: Topology,
        architecture_id: str,
        step: pb.TrajectoryStep,
        *,
        now_s: float,
    ) -> list[pb.Trajectory]:
        closed = self.expire(now_s=now_s)
        current = self._open.get(training_run_id)
        if current is not None and (
            current.topology.digest != topology.digest or current.architecture_id != architecture_id
        ):
            closed.append(self._close(training_run_id))
            current = None
        if current is None:
            current = self._open[training_run_id] = _Open(topology, architecture_id, now_s)
        current.steps.append(step)
        if len(current.steps) >= self.settings.segment_max_steps:
            closed.append(self._close(training_run_id))
        return closed

    def expire(self, *, now_s: float) -> list[pb.Trajectory]:
        """Close the segments that have waited ``segment_max_age_s``."""
        limit = self.settings.segment_max_age_s
        old = [run for run, o in self._open.items() if now_s - o.opened_s >= limit]
        return [self._close(run) for run in old]

    def end_run(self, training_run_id: str, progress: Progress) -> pb.Trajectory:
        """The run's last segment (possibly without steps), marked as its end."""
        if training_run_id in self._open:
            segment = self._close(training_run_id)
        else:
            segment = pb.Trajectory(
                trajectory_id=trajectory_id(training_run_id, None),
                actor_id=self.actor_id,
                training_run_id=training_run_id,
            )
        segment.run_ended = True
        segment.final_progress.CopyFrom(progress_message(progress))
        return segment

    def flush(self) -> list[pb.Trajectory]:
        return [self._close(run) for run in list(self._open)]

    def _close(self, training_run_id: str) -> pb.Trajectory:
        segment = self._open.pop(training_run_id)
        first = segment.steps[0]
        return pb.Trajectory(
            trajectory_id=trajectory_id(training_run_id, first.decision_step),
            actor_id=self.actor_id,
            policy_version=first.policy_version,
            steps=segment.steps,
            training_run_id=training_run_id,
            architecture_id=segment.architecture_id,
            topology=topology_message(segment.topology),
        )
