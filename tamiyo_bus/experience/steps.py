"""One decision as experience on the bus, and back (pure: no IO, no clock).

A step carries the graph the policy decided on exactly as the replay stores it (the
codec's per-step cells, float16, and the action masks as packed bits), so what crosses
the bus is what the learner's replay would keep anyway; the graph's structure travels
once per segment (:func:`topology_message`). Reading is strict: a step whose arrays do
not fit its topology, or a topology whose arrays do not make a structure, is a
``ValueError`` (the learner dead-letters the entry), never a crash further on.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load, save

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.learning.graph_batch import GraphGroup
from tamiyo_bus.learning.hierarchical import ActionBatch
from tamiyo_bus.learning.replay.codec import (
    FEATURE_DTYPE,
    EncodedGraph,
    Topology,
    decode,
    encode,
    structure_arrays,
    structure_from_arrays,
)
from tamiyo_bus.learning.reward import Progress
from tamiyo_bus.policy.actions import NUM_ACTIONS, PolicyAction
from tamiyo_bus.policy.graph import PolicyGraph

_WIRE_FLOAT16 = np.dtype("<f2")
_TOPOLOGY_COMPRESSION = 6
MAX_TOPOLOGY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What the step path knows of a decision once its command is signed."""

    command_id: str
    applied_step: int  # the step the command was handed to the trainer at
    acted: bool  # the command acts after the risk gate's review
    risk_category: int


def choice_message(action: PolicyAction) -> pb.PolicyChoice:
    return pb.PolicyChoice(
        action=action.action,
        seed=action.seed,
        blueprint=action.blueprint,
        blend=action.blend,
        alpha_log_steps=action.alpha_log_steps,
        lr_log_scale=action.lr_log_scale,
    )


def action_of(choice: pb.PolicyChoice) -> PolicyAction:
    if choice.action >= NUM_ACTIONS:
        raise ValueError(f"action {choice.action} is outside the action space")
    return PolicyAction(
        choice.action,
        choice.seed,
        choice.blueprint,
        choice.blend,
        choice.alpha_log_steps,
        choice.lr_log_scale,
    )


def progress_message(progress: Progress) -> pb.RunProgress:
    return pb.RunProgress(
        training_loss=progress.loss,
        validation_accuracy=progress.accuracy,
        parameter_ratio=progress.parameter_ratio,
    )


def progress_of(message: pb.RunProgress) -> Progress:
    return Progress(
        loss=message.training_loss,
        accuracy=message.validation_accuracy,
        parameter_ratio=message.parameter_ratio,
    )


def topology_message(topology: Topology) -> pb.GraphTopology:
    """The structure's arrays, compressed: its template is mostly zeros (55 KB raw at
    the reference size, about 1 KB compressed)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in structure_arrays(topology.structure).items()}
    packed = zlib.compress(save(arrays), _TOPOLOGY_COMPRESSION)
    return pb.GraphTopology(digest=topology.digest, arrays=packed)


def _inflate(packed: bytes) -> bytes:
    """Decompress at most MAX_TOPOLOGY_BYTES: a small entry must not expand without
    bound in the learner's memory."""
    inflater = zlib.decompressobj()
    raw = inflater.decompress(packed, MAX_TOPOLOGY_BYTES)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError(f"topology arrays exceed {MAX_TOPOLOGY_BYTES} bytes or are truncated")
    return raw


def topology_of(message: pb.GraphTopology) -> Topology:
    """The topology ``message`` describes; ValueError when its arrays do not make a
    structure or do not match its digest."""
    try:
        arrays = load(_inflate(message.arrays))
    except Exception as error:  # zlib and safetensors raise their own types on bad bytes
        raise ValueError(f"topology arrays unreadable: {error}") from error
    topology = Topology(structure_from_arrays(arrays))
    if topology.digest != message.digest:
        raise ValueError("topology arrays do not match their digest")
    return topology


def trajectory_step(
    topology: Topology,
    graph: PolicyGraph,
    action: PolicyAction,
    *,
    log_prob: float,
    value: float,
    policy_version: int,
    decision_step: int,
    progress: Progress,
    outcome: StepOutcome,
) -> pb.TrajectoryStep:
    """The experience of one decision on ``graph`` (whose structure is ``topology``'s)."""
    encoded = encode(topology, graph)
    return pb.TrajectoryStep(
        command_id=outcome.command_id,
        decision_step=decision_step,
        applied_step=outcome.applied_step,
        policy_version=policy_version,
        choice=choice_message(action),
        behaviour_log_prob=log_prob,
        behaviour_value=value,
        features=encoded.features.astype(_WIRE_FLOAT16).tobytes(),
        node_scalar=encoded.node_scalar.astype(_WIRE_FLOAT16).tobytes(),
        compat=encoded.compat.astype(_WIRE_FLOAT16).tobytes(),
        mask_bits=encoded.mask_bits.tobytes(),
        progress=progress_message(progress),
        acted=outcome.acted,
        risk_category=outcome.risk_category,
    )


def _cells(data: bytes, expected: int, name: str) -> np.ndarray:
    if len(data) != expected * _WIRE_FLOAT16.itemsize:
        raise ValueError(f"{name}: {len(data)} bytes, the topology needs {expected} cells")
    return np.frombuffer(data, _WIRE_FLOAT16).astype(FEATURE_DTYPE)


def encoded_graph(topology: Topology, step: pb.TrajectoryStep) -> EncodedGraph:
    """The step's graph cells, checked against ``topology``'s widths."""
    mask_bytes = math.ceil(topology.mask_bits / 8)
    if len(step.mask_bits) != mask_bytes:
        raise ValueError(f"mask_bits: {len(step.mask_bits)} bytes, the topology needs {mask_bytes}")
    return EncodedGraph(
        _cells(step.features, topology.feature_cells, "features"),
        _cells(step.node_scalar, topology.structure.num_nodes, "node_scalar"),
        _cells(step.compat, topology.compat_cells, "compat"),
        np.frombuffer(step.mask_bits, np.uint8).copy(),
    )


def graph_group(topology: Topology, steps: Sequence[pb.TrajectoryStep]) -> GraphGroup:
    """The steps' graphs and choices, stacked as the learner evaluates them."""
    encoded = [encoded_graph(topology, step) for step in steps]
    actions = ActionBatch.of([action_of(step.choice) for step in steps])
    return decode(
        topology,
        np.stack([e.features for e in encoded]),
        np.stack([e.node_scalar for e in encoded]),
        np.stack([e.compat for e in encoded]),
        np.stack([e.mask_bits for e in encoded]),
        actions,
    )
