"""The telemetry vocabulary producers and consumers agree on: source names, label keys,
the event and metric names the status page, the dashboard and the default alert rules
read, breaker gauge values, and small packet builders.

Names are the ones the producers emit: Tamiyo's risk engine (event kinds of
leyline_vocab.events, ``risk_*`` metrics through a metrics sink), Kasmina's per-step
telemetry (``seed_*`` series labelled run/seed/layer, ``seed_transition`` events), the
decision records turned into packets by producers.sinks, Simic's learner (``learner_*``
gauges) and the hub's own counters.
After the hub's normalisation each is prefixed with its source:
``tamiyo.breaker_opened``.
"""

from __future__ import annotations

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from oona.breaker import BreakerState
from oona.events import make_event

SOURCE_TAMIYO = "tamiyo"
SOURCE_TOLARIA = "tolaria"
SOURCE_KASMINA = "kasmina"

LABEL_RUN = "run"
LABEL_SEED = "seed"
LABEL_LAYER = "layer"

EVENT_DECISION = "decision"
EVENT_SEED_TRANSITION = "seed_transition"
BREAKER_EVENTS = frozenset(
    {EventKind.BREAKER_OPENED, EventKind.BREAKER_HALF_OPEN, EventKind.BREAKER_CLOSED}
)
CONSERVATIVE_EVENTS = {EventKind.CONSERVATIVE_ENTERED: True, EventKind.CONSERVATIVE_EXITED: False}

METRIC_DECISIONS = "decisions_total"
METRIC_DECISION_LATENCY = "decision_latency"
METRIC_INFERENCE_LATENCY = "inference_latency"
METRIC_CADENCE = "decision_cadence_steps"
METRIC_RISK = "expected_risk_severity"
METRIC_BREAKER_STATE = "risk_breaker_state"
METRIC_CONSERVATIVE = "risk_conservative_mode"
METRIC_BREAKER_TRANSITIONS = "risk_breaker_transitions"
METRIC_RISK_DECISIONS = "risk_decisions"
METRIC_SEED_ALPHA = "seed_alpha"
METRIC_SEED_STAGE = "seed_stage"

# Simic's learner (source "simic"): gauges set after every update and candidate.
METRIC_LEARNER_POLICY_LOSS = "learner_policy_loss"
METRIC_LEARNER_VALUE_LOSS = "learner_value_loss"
METRIC_LEARNER_ENTROPY = "learner_entropy"
METRIC_LEARNER_APPROX_KL = "learner_approx_kl"
METRIC_LEARNER_CLIP_FRACTION = "learner_clip_fraction"
METRIC_LEARNER_EXPLAINED_VARIANCE = "learner_explained_variance"
METRIC_LEARNER_LEARNING_RATE = "learner_learning_rate"
METRIC_LEARNER_GRAD_NORM = "learner_grad_norm"
METRIC_LEARNER_UPDATES = "learner_updates"
METRIC_LEARNER_POLICY_VERSION = "learner_policy_version"
METRIC_LEARNER_CANDIDATES = "learner_candidates"  # labelled outcome: published/rejected/deferred
METRIC_LEARNER_REJECTED_IN_ROW = "learner_candidates_rejected_in_row"
METRIC_LEARNER_REPLAY_FILL = "learner_replay_fill"  # live items / capacity
METRIC_LEARNER_EXPERIENCE = "learner_experience"  # labelled state: joined/expired/unmatched...
LABEL_OUTCOME = "outcome"
LABEL_STATE = "state"

# The V-trace learner (source "simic", its lead rank): gauges set after every update.
METRIC_IMPALA_UPDATES = "impala_updates"
METRIC_IMPALA_TRANSITIONS = "impala_transitions_learnt"
METRIC_IMPALA_TOTAL_LOSS = "impala_total_loss"
METRIC_IMPALA_POLICY_LOSS = "impala_policy_loss"
METRIC_IMPALA_VALUE_LOSS = "impala_value_loss"
METRIC_IMPALA_ENTROPY = "impala_entropy"
METRIC_IMPALA_MEAN_RHO = "impala_mean_rho"
METRIC_IMPALA_GRAD_NORM = "impala_grad_norm"
METRIC_IMPALA_LEARNING_RATE = "impala_learning_rate"
METRIC_IMPALA_LAG_P50 = "impala_lag_p50_s"  # actor's envelope to the end of the update
METRIC_IMPALA_LAG_P99 = "impala_lag_p99_s"
METRIC_IMPALA_SEGMENTS = "impala_segments"  # labelled outcome: consumed/rejected/ignored/held_out
METRIC_IMPALA_POLICIES = "impala_policies"  # labelled outcome: published/rejected/deferred
METRIC_IMPALA_POLICY_VERSION = "impala_policy_version"
METRIC_IMPALA_BUFFER_FILL = "impala_buffer_fill"  # buffered segments / buffer_max_segments

# The hub's own counters (source "hub").
HUB_RECEIVED = "packets_received"
HUB_DUPLICATES = "packets_duplicate"
HUB_SHED_PACKETS = "packets_shed"
HUB_SHED_SERIES = "points_shed_series_cap"
HUB_SHED_EVENTS = "events_shed_cap"
HUB_LABELS_DROPPED = "labels_dropped"
HUB_NON_FINITE = "points_non_finite"
HUB_IGNORED = "messages_ignored"
HUB_MALFORMED = "packets_malformed"

BREAKER_STATE_VALUE: dict[BreakerState, float] = {
    BreakerState.CLOSED: 0.0,
    BreakerState.HALF_OPEN: 1.0,
    BreakerState.OPEN: 2.0,
}
"""The ``risk_breaker_state`` gauge's value for each state."""
BREAKER_STATE_NAMES = {value: state.value for state, value in BREAKER_STATE_VALUE.items()}
BREAKER_OPEN_LEVEL = max(BREAKER_STATE_VALUE.values())

_PRIORITY_RANK = {
    pb.MESSAGE_PRIORITY_UNKNOWN: 0,
    pb.MESSAGE_PRIORITY_LOW: 1,
    pb.MESSAGE_PRIORITY_NORMAL: 2,
    pb.MESSAGE_PRIORITY_HIGH: 3,
    pb.MESSAGE_PRIORITY_CRITICAL: 4,
}


def effective_priority(packet: pb.TelemetryPacket) -> pb.MessagePriority.ValueType:
    """The priority a packet travels and is handled with: the highest of its own (NORMAL
    when unset) and its events' priorities, raised to CRITICAL when the packet or an
    event is at CRITICAL level. A packet is as urgent as the most urgent thing in it,
    so a critical event never rides a sheddable batch."""
    if packet.level == pb.TELEMETRY_LEVEL_CRITICAL:
        return pb.MESSAGE_PRIORITY_CRITICAL
    best = packet.priority or pb.MESSAGE_PRIORITY_NORMAL
    for event in packet.events:
        if event.level == pb.TELEMETRY_LEVEL_CRITICAL:
            return pb.MESSAGE_PRIORITY_CRITICAL
        if _PRIORITY_RANK.get(event.priority, 0) > _PRIORITY_RANK.get(best, 0):
            best = event.priority
    return best


def add_metric(
    packet: pb.TelemetryPacket,
    name: str,
    value: float,
    unit: str = "",
    *,
    kind: pb.MetricKind.ValueType = pb.METRIC_KIND_UNKNOWN,
    **labels: str,
) -> None:
    """Append one metric point with string labels."""
    packet.metrics.add(name=name, value=value, unit=unit, kind=kind, labels=labels)


def add_event(
    packet: pb.TelemetryPacket,
    name: str,
    *,
    priority: pb.MessagePriority.ValueType = pb.MESSAGE_PRIORITY_NORMAL,
    **attributes: str | int | float,
) -> None:
    """Append one event (level from its priority; attribute values sent as strings)."""
    packet.events.append(make_event(name, priority, **attributes))


def decision_packet(
    *,
    run: str,
    step: int,
    decision_step: int,
    cadence_steps: int,
    command_type: pb.CommandType.ValueType,
    action: str,
    reason: str,
    command_id: str,
    policy_version: int,
    latency_s: float,
    inference_s: float | None,
    expected_risk: float | None,
) -> pb.TelemetryPacket:
    """One Tamiyo decision: an event with its reason and the step it was decided on
    (``decision_step``) and applied at (``step``) for the status page, a decision
    counter per command type, the cadence in force, the decision latency and, when the
    policy ran, its inference latency and the risk head's expected severity."""
    type_name = pb.CommandType.Name(command_type)
    packet = pb.TelemetryPacket(source=SOURCE_TAMIYO)
    add_event(
        packet, EVENT_DECISION, run=run, step=step, decision_step=decision_step,
        command_type=type_name, action=action,
        reason=reason, command_id=command_id, policy_version=policy_version,
    )  # fmt: skip
    add_metric(packet, METRIC_DECISIONS, 1.0, run=run, command_type=type_name)
    add_metric(packet, METRIC_DECISION_LATENCY, latency_s, "s", run=run)
    add_metric(packet, METRIC_CADENCE, float(cadence_steps), kind=pb.METRIC_KIND_GAUGE, run=run)
    if inference_s is not None:
        add_metric(packet, METRIC_INFERENCE_LATENCY, inference_s, "s", run=run)
    if expected_risk is not None:
        add_metric(packet, METRIC_RISK, expected_risk, kind=pb.METRIC_KIND_GAUGE, run=run)
    return packet
