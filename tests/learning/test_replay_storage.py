"""Graph replay storage: a transition decodes to the graph that was stored, memory is
bounded by capacity x row size (<= 4 KB at the reference size), topologies are stored
once, expiry and persistence work, and stale priority updates are ignored."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tamiyo_bus.learning.graph_batch import GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.learning.replay import (
    GraphReplay,
    GraphTransition,
    ReplaySettings,
    ReplayStorageSettings,
    ReplayWriterSettings,
)
from tamiyo_bus.policy.actions import PolicyAction
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.risk import Category
from tests import states as synthetic

from .graphs import TINY, graphs, sampled_actions

FP16_TOLERANCE = 5e-3  # float16 of features clipped to +-10


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


def transition(graph: PolicyGraph, i: int, **overrides: Any) -> GraphTransition:
    """Transition ``i``: recognisable values derived from ``i``, any field overridden."""
    base = GraphTransition(
        graph=graph,
        action=PolicyAction(3, seed=i % 4, blend=1, alpha_log_steps=4.5 + i),
        log_prob=-1.0 - i,
        value=0.25 * i,
        reward=float(i),
        policy_version=7,
        step=100 + i,
        advantage=0.5,
        returns=1.5,
    )
    return dataclasses.replace(base, **overrides)


def replay(capacity: int, clock: Clock | None = None, **writer: Any) -> GraphReplay:
    settings = ReplaySettings(
        storage=ReplayStorageSettings(capacity_transitions=capacity),
        writer=ReplayWriterSettings(**writer),
    )
    return GraphReplay(settings, clock=clock or Clock())


def test_a_stored_transition_decodes_to_the_graph_and_choice_that_were_stored() -> None:
    graph_list = graphs(6, structures=2)
    r = replay(16)
    slots = r.add([transition(g, i) for i, g in enumerate(graph_list)])
    assert len(r.storage.topologies) == 2
    stored = r.storage.gather(slots)
    where = GraphTransitions.from_groups(stored.groups)
    for position, slot in enumerate(stored.slots):
        i = int(np.flatnonzero(slots == slot)[0])
        original = graph_list[i]
        group = stored.groups[int(where.group_of[position])]
        row = int(where.row_of[position])
        for node_type, x in original.x_dict().items():
            torch.testing.assert_close(group.x[node_type][row], x, atol=FP16_TOLERANCE, rtol=1e-3)
        torch.testing.assert_close(group.edge_attr[row], original.edge_attr, atol=1e-3, rtol=1e-3)
        assert torch.equal(group.masks.action[row], original.masks.action)
        assert torch.equal(group.masks.seed[row], original.masks.seed)
        assert torch.equal(group.masks.blueprint[row], original.masks.blueprint)
        assert int(group.actions.action[row]) == 3 and int(group.actions.seed[row]) == i % 4
        assert float(group.actions.alpha_log_steps[row]) == 4.5 + i
        assert stored.columns["log_prob"][position] == -1.0 - i
        assert stored.columns["step"][position] == 100 + i


def test_the_policy_sees_a_decoded_graph_as_the_original() -> None:
    torch.manual_seed(0)
    policy = ReferencePolicy(TINY)
    graph_list = graphs(12, structures=3)
    actions = sampled_actions(policy, graph_list)
    r = replay(16)
    slots = r.add(
        [
            dataclasses.replace(transition(g, i), action=a)
            for i, (g, a) in enumerate(zip(graph_list, actions, strict=True))
        ]
    )
    stored = r.storage.gather(slots)
    evaluator = GraphPolicyEvaluator(policy)
    every = torch.arange(len(graph_list))
    with torch.no_grad():
        original = evaluator.evaluate(GraphTransitions.of(graph_list, actions), every)
        decoded = evaluator.evaluate(GraphTransitions.from_groups(stored.groups), every)
    order = torch.tensor([int(np.flatnonzero(slots == slot)[0]) for slot in stored.slots])
    torch.testing.assert_close(decoded.log_prob, original.log_prob[order], atol=5e-3, rtol=0)
    torch.testing.assert_close(decoded.value, original.value[order], atol=5e-3, rtol=0)


def test_memory_is_bounded_by_capacity_and_a_row_fits_4_kb_at_the_reference_size() -> None:
    graph_list = graphs(8, structures=2, size=synthetic.REFERENCE_SIZE)
    capacity = 64
    r = replay(capacity)
    r.add([transition(graph_list[0], 0)])
    allocated = r.storage.row_bytes() * capacity
    for lap in range(3):
        r.add([transition(g, i) for i, g in enumerate(graph_list * 8)][: capacity - lap])
    assert len(r) == capacity
    assert r.writer.counts["overwritten"] > 0
    assert r.storage.row_bytes() * capacity == allocated  # nothing grew
    arrays = [*r.storage.columns.values(), *r.storage.graph_columns.values()]
    assert sum(a.nbytes for a in arrays) <= allocated
    per_transition = r.bytes_per_transition()
    print(f"bytes per transition at the reference size: {per_transition:.0f}")
    assert per_transition <= 4096
    assert per_transition * 100_000 <= 4096 * 100_000  # the 100 K buffer's bound


def test_a_larger_graph_than_the_rows_admit_is_refused() -> None:
    r = replay(8)
    r.add([transition(graphs(1)[0], 0)])
    with pytest.raises(ValueError, match="layout_headroom_fraction"):
        r.add([transition(graphs(1, size=synthetic.LARGE_SIZE)[0], 0)])


def test_the_least_used_topology_makes_room_when_the_table_is_full() -> None:
    settings = ReplaySettings(
        storage=ReplayStorageSettings(capacity_transitions=32, max_topologies=2)
    )
    r = GraphReplay(settings, clock=Clock())
    graph_list = graphs(5, structures=3)  # structures 0 1 2 0 1
    r.add([transition(g, i) for i, g in enumerate(graph_list[:2] + graph_list[3:])])
    r.add([transition(graph_list[2], 2)])
    assert len(r.storage.topologies) == 2
    assert r.writer.counts["evicted_topology"] == 2  # the first structure's two transitions
    assert len(r) == 3
    assert r.sampler.population == 3


def test_expiry_by_steps_seconds_and_policy_lag_is_counted_and_never_sampled() -> None:
    clock = Clock()
    r = replay(32, clock, max_age_steps=50, max_age_s=60.0, max_policy_lag_versions=2)
    g = graphs(1)[0]
    r.add([transition(g, 0, step=0), transition(g, 1, step=90)])
    clock.now_s += 100.0
    r.add([transition(g, 2, step=95), transition(g, 3, step=96, policy_version=3)])
    expired = r.expire(now_step=100, policy_version=7)
    # step 0 is 100 steps old; step 90 is 100 s old; version 3 is 4 versions behind.
    assert (expired.age_steps, expired.age_s, expired.policy_lag) == (1, 1, 1)
    assert r.writer.counts["expired_age_steps"] == 1
    assert len(r) == 1
    sample = r.sample(16)
    assert set(sample.columns["step"].tolist()) == {95}


def test_rare_events_and_rollbacks_are_flagged_for_the_floor() -> None:
    r = replay(16)
    g = graphs(1)[0]
    slots = r.add(
        [
            transition(g, 0, risk_category=Category.ORANGE),
            transition(g, 1, risk_category=Category.RED),
            transition(g, 2, risk_category=Category.CRITICAL),
            transition(g, 3, rollback=True),
        ]
    )
    assert r.sampler.is_rare[slots].tolist() == [False, True, True, True]


def test_persistence_round_trips_without_code_in_the_file(tmp_path: Path) -> None:
    clock = Clock()
    r = replay(32, clock)
    graph_list = graphs(10, structures=2)
    r.add([transition(g, i, rollback=i == 3) for i, g in enumerate(graph_list)])
    first = r.sample(8)
    r.update_priorities(first, np.arange(8.0))
    path = tmp_path / "replay.safetensors"
    written = r.save(path)
    assert path.stat().st_size == written
    assert not list(tmp_path.glob("*.partial"))
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert header["__metadata__"]["format"] == "tamiyo-replay-v1"

    restored = replay(32, clock)
    restored.load(path)
    assert len(restored) == len(r)
    assert restored.writer.counts == r.writer.counts
    assert restored.sampler.all.total == pytest.approx(r.sampler.all.total)
    r.rng, restored.rng = np.random.default_rng(5), np.random.default_rng(5)
    a, b = r.sample(12), restored.sample(12)
    assert (a.slots == b.slots).all() and torch.equal(a.weights, b.weights)
    for ga, gb in zip(a.transitions.groups, b.transitions.groups, strict=True):
        assert all(torch.equal(ga.x[t], gb.x[t]) for t in ga.x)
        assert torch.equal(ga.edge_attr, gb.edge_attr)
    with pytest.raises(ValueError, match="32 slots"):
        replay(64, clock).load(path)


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(2)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="tamiyo-replay-v1"):
        replay(8).load(path)


def test_priority_updates_for_reused_slots_are_ignored() -> None:
    r = replay(8)
    g = graphs(1)[0]
    r.add([transition(g, i) for i in range(8)])
    sample = r.sample(4)
    r.add([transition(g, i) for i in range(8)])  # every slot reused
    before = r.sampler.all.total
    assert r.update_priorities(sample, np.full(4, 100.0)) == 4
    assert r.sampler.all.total == before
    fresh = r.sample(4)
    assert r.update_priorities(fresh, np.full(4, 100.0)) == 0
    assert r.sampler.max_priority == pytest.approx(100.0 + 1e-6)
