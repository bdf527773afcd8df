"""The figures Simic's validation gate judges, from the V-trace learner's held-out
segments (``simic.gate``'s checks and ``simic.evaluation``'s measures, reused).

A fixed fraction of segments (a hash of the trajectory id, so a redelivery holds out
the same ones) is never trained on; the most recent of them are the gate's data. The
value error of each critic is measured against one shared target, the V-trace targets
computed under the running policy (on-policy: the n-step returns), and the KL between
running and candidate on the held-out states, as Simic's learner does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.impala.batch import TopologyCache, segment_batch, trained_steps
from tamiyo_bus.impala.loss import vtrace_targets
from tamiyo_bus.impala.settings import ImpalaLossSettings
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.simic.evaluation import held_out_figures
from tamiyo_bus.simic.gate import HeldOutFigures


class HeldOutSegments:
    """The latest held-out segments, bounded."""

    def __init__(self, max_segments: int, *, behaviour_bootstrap: bool) -> None:
        self._segments: deque[pb.Trajectory] = deque(maxlen=max_segments)
        self._behaviour_bootstrap = behaviour_bootstrap

    def _decisions(self, segment: pb.Trajectory) -> int:
        return trained_steps(segment, behaviour_bootstrap=self._behaviour_bootstrap)

    def add(self, segment: pb.Trajectory) -> None:
        if self._decisions(segment) > 0:
            self._segments.append(segment)

    @property
    def decisions(self) -> int:
        return sum(self._decisions(s) for s in self._segments)

    def segments(self) -> Sequence[pb.Trajectory]:
        return tuple(self._segments)


@torch.no_grad()
def figures_on(
    segments: Sequence[pb.Trajectory],
    running: ReferencePolicy,
    candidate: ReferencePolicy,
    topologies: TopologyCache,
    settings: ImpalaLossSettings,
) -> HeldOutFigures:
    """Laid out and targeted as the learner trains (``settings``)."""
    batch = segment_batch(segments, topologies, behaviour_bootstrap=settings.behaviour_bootstrap)
    inputs = batch.evaluate(running)
    targets = vtrace_targets(inputs, settings.vtrace)
    returns = torch.from_numpy(targets.values)[batch.time_index, batch.column]
    return held_out_figures(running, candidate, batch.trained_inputs(), returns)
