"""The learner's intake: trajectories and field reports, through group ``simic-learner``.

Independent of Simic's report intake (group ``simic``, which stores and acks reports
for Tamiyo's delivery): this group reads both the trajectories stream and the
field-reports stream and writes what it reads into the learner's own store. A handler
returns, so that Oona acks the entry, only once the store holds it; redelivered
entries are stored once (the store's keys).

A trajectory is checked whole before anything of it is stored (:func:`check_segment`):
its topology must make a graph structure matching its digest, every step's cells must
fit that topology, and every choice must lie in the action space and be one the
step's masks allowed. Otherwise the entry is refused (a RejectedMessage: Oona
dead-letters it with the reason and counts it), and nothing else is lost.

A rewarded segment (a simulated actor's, whose steps carry their reward and progress
left unreported) is the V-trace learner's food: it is acked, counted and not stored,
since its decisions would wait here for field reports that never come.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer, Delivery, Subscription
from oona.errors import RejectedMessage
from oona.events import EventSink
from oona.keys import Keyring
from oona.payloads import decode
from oona.streams import Stream
from tamiyo_bus.experience.steps import action_of, graph_group, topology_of
from tamiyo_bus.learning.graph_batch import GraphGroup
from tamiyo_bus.policy.actions import ACTION_SPACE, BLEND_METHODS, SEED_COLUMN
from tamiyo_bus.simic.gate import is_held_out
from tamiyo_bus.simic.store import ExperienceStore

BAD_TOPOLOGY = "bad_topology"
BAD_CELLS = "bad_cells"
BAD_CHOICE = "bad_choice"
_ACCEPTED = frozenset({pb.MESSAGE_TYPE_TRAJECTORY, pb.MESSAGE_TYPE_FIELD_REPORT})
_NO_ITEM = -1


def choice_problem(group: GraphGroup, row: int) -> str | None:
    """Why the choice of graph ``row`` could not have been made on it (None: fine)."""
    actions, masks = group.actions, group.masks
    action = int(actions.action[row])
    seed, blueprint, blend = (int(x[row]) for x in (actions.seed, actions.blueprint, actions.blend))
    num_seeds, num_blueprints = masks.blueprint.shape[1:]
    if not masks.action[row, action]:
        return f"action {action} is masked"
    spec = ACTION_SPACE[action]
    if not (_NO_ITEM <= seed < num_seeds and _NO_ITEM <= blueprint < num_blueprints):
        return f"seed {seed} or blueprint {blueprint} outside the graph"
    if not _NO_ITEM <= blend < len(BLEND_METHODS):
        return f"blend {blend} outside the blend methods"
    if spec.needs_seed and (seed < 0 or not masks.seed[row, seed, SEED_COLUMN[action]]):
        return f"seed {seed} is not allowed for action {action}"
    if spec.needs_blueprint and (blueprint < 0 or not masks.blueprint[row, seed, blueprint]):
        return f"blueprint {blueprint} is not allowed on seed {seed}"
    if spec.has_blend and blend < 0:
        return "a blend action without its blend method"
    continuous = (float(actions.alpha_log_steps[row]), float(actions.lr_log_scale[row]))
    if not all(math.isfinite(x) for x in continuous):
        return "alpha or learning-rate draw not finite"
    return None


def check_segment(segment: pb.Trajectory) -> None:
    """RejectedMessage when any part of ``segment`` cannot be learnt from."""
    if not segment.training_run_id:
        raise RejectedMessage("malformed_payload", "trajectory without a training run id")
    if not segment.steps:
        return
    try:
        topology = topology_of(segment.topology)
    except ValueError as error:
        raise RejectedMessage(BAD_TOPOLOGY, str(error)[:500]) from None
    for step in segment.steps:
        try:
            action_of(step.choice)
        except ValueError as error:
            raise RejectedMessage(BAD_CHOICE, f"step {step.decision_step}: {error}") from None
    try:
        group = graph_group(topology, segment.steps)
    except ValueError as error:
        raise RejectedMessage(BAD_CELLS, str(error)[:500]) from None
    for row, step in enumerate(segment.steps):
        problem = choice_problem(group, row)
        if problem is None and not (
            math.isfinite(step.behaviour_log_prob) and math.isfinite(step.behaviour_value)
        ):
            problem = "behaviour log-probability or value not finite"
        if problem is not None:
            raise RejectedMessage(BAD_CHOICE, f"step {step.decision_step}: {problem}")


def decode_report(payload: bytes) -> pb.FieldReport:
    report = decode(pb.FieldReport, payload)
    if not report.report_id or not report.command_id:
        raise RejectedMessage("malformed_payload", "field report without report or command id")
    return report


class ExperienceIntake:
    """The consumer of both streams into the learner's store."""

    def __init__(
        self,
        bus: Bus,
        keyring: Keyring,
        store: ExperienceStore,
        *,
        group: str,
        consumer: str,
        held_out_fraction: float,
        max_age_ms: float,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = bus.metrics
        self.held_out_fraction = held_out_fraction
        self._clock = clock
        subscription = Subscription(
            group=group,
            consumer=consumer,
            streams=(Stream.TRAJECTORIES, Stream.FIELD_REPORTS),
            accepted_types=_ACCEPTED,
            max_age_ms=max_age_ms,
        )
        self.consumer = Consumer(bus, subscription, self._handle, keyring, events=events)

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.run(stop)

    async def drain(self) -> int:
        return await self.consumer.drain()

    async def _handle(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        if envelope.message_type == pb.MESSAGE_TYPE_FIELD_REPORT:
            report = decode_report(envelope.payload)
            stored = await asyncio.to_thread(
                self.store.add_report, report, envelope.payload, envelope.key_id,
                now_s=self._clock(),
            )  # fmt: skip
            self.metrics.inc("learner_reports_stored" if stored else "learner_reports_duplicate")
            return
        segment = decode(pb.Trajectory, envelope.payload)
        if segment.rewarded:  # an actor's, for the V-trace learner: no field report joins it
            self.metrics.inc("learner_rewarded_segments_skipped")
            return
        new = await asyncio.to_thread(self._store_segment, segment, envelope.key_id)
        self.metrics.inc("learner_decisions_stored", new)
        self.metrics.inc("learner_decisions_duplicate", len(segment.steps) - new)

    def _store_segment(self, segment: pb.Trajectory, signer_key_id: str) -> int:
        """Check the whole segment (RejectedMessage), then store it; the new decisions."""
        check_segment(segment)
        held_out = [is_held_out(s.command_id, self.held_out_fraction) for s in segment.steps]
        return self.store.add_segment(
            segment, signer_key_id, held_out=held_out, now_s=self._clock()
        )
