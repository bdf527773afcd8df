"""A minibatch of graphs of several structures, evaluated in one forward over their
disjoint union, equals evaluating each graph alone (values and gradients)."""

from __future__ import annotations

import torch

from tamiyo_bus.learning.graph_batch import GraphGroup, GraphTransitions
from tamiyo_bus.learning.graph_evaluation import GraphPolicyEvaluator
from tamiyo_bus.policy.actions import PolicyAction, entropy, log_prob
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.reference import ReferencePolicy

from .graphs import TINY, graphs, sampled_actions

STRUCTURES = 3


def setup() -> tuple[ReferencePolicy, GraphTransitions, list[PolicyGraph], list[PolicyAction]]:
    torch.manual_seed(0)
    policy = ReferencePolicy(TINY)
    graph_list = graphs(12, STRUCTURES)
    actions = sampled_actions(policy, graph_list)
    return policy, GraphTransitions.of(graph_list, actions), graph_list, actions


def test_transitions_are_grouped_by_structure_in_rollout_order() -> None:
    _, transitions, graph_list, _ = setup()
    assert len(transitions.groups) == STRUCTURES
    for i, graph in enumerate(graph_list):
        group = transitions.groups[int(transitions.group_of[i])]
        assert group.structure is graph.structure
        row = int(transitions.row_of[i])
        assert torch.equal(group.edge_attr[row], graph.edge_attr)


def grads(policy: ReferencePolicy) -> list[torch.Tensor]:
    """Every parameter's gradient (zero where none flowed), then cleared."""
    out = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    return out


def test_batched_evaluation_equals_per_graph_evaluation() -> None:
    policy, transitions, graph_list, actions = setup()
    evaluator = GraphPolicyEvaluator(policy)
    indices = torch.tensor([7, 0, 11, 3, 4, 9, 1])
    batched = evaluator.evaluate(transitions, indices)
    (batched.log_prob + batched.value).sum().backward()
    batched_grads = grads(policy)

    single_total = torch.zeros(())
    for position, i in enumerate(indices.tolist()):
        out = policy(graph_list[i])
        lp = log_prob(out, graph_list[i].masks, actions[i])
        with torch.no_grad():
            h = entropy(out, graph_list[i].masks)
        torch.testing.assert_close(batched.log_prob[position], lp, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.entropy[position], h, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.value[position], out.value, rtol=1e-4, atol=1e-5)
        single_total = single_total + lp + out.value
    single_total.backward()
    for got, want in zip(batched_grads, grads(policy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)

    # The single-graph entropy has NaN gradients under masks; the batched one does not.
    evaluator.evaluate(transitions, indices).entropy.sum().backward()
    assert all(torch.isfinite(g).all() for g in grads(policy))


def test_a_group_rejects_graphs_of_another_structure() -> None:
    policy = ReferencePolicy(TINY)
    graph_list = graphs(2, 2)
    try:
        GraphGroup.stack(graph_list, sampled_actions(policy, graph_list))
    except ValueError as error:
        assert "one structure" in str(error)
    else:
        raise AssertionError("mixed structures were stacked")
