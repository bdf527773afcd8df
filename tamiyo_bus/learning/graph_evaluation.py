"""Tamiyo's graph policy as a PPO evaluator: one forward for a whole minibatch.

A minibatch of graph transitions (possibly of several structures) is embedded as one
disjoint union by ``ReferencePolicy.embed_typed``; the shared heads then run per
structure group on its stacked embeddings, and the hierarchical log-probabilities and
entropies are computed for all graphs of a group at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tamiyo_bus.learning.evaluation import Evaluation
from tamiyo_bus.learning.graph_batch import GraphGroup, GraphTransitions, disjoint_union
from tamiyo_bus.learning.hierarchical import batch_entropy, batch_log_prob
from tamiyo_bus.policy.actions import ActionMasks, PolicyOutput
from tamiyo_bus.policy.reference import ReferencePolicy
from tamiyo_bus.policy.schema import BLUEPRINT, NODE_TYPES, SEED
from tamiyo_bus.policy.structure import TYPE_INDEX


def evaluate_groups(policy: ReferencePolicy, groups: Sequence[GraphGroup]) -> list[PolicyOutput]:
    """Each group's head outputs (leading axis: its graphs), from one GNN forward."""
    device = next(policy.parameters()).device
    union = disjoint_union(groups, device)
    embedded = policy.embed_typed(union.x, union.edge_index, union.edge_attr)
    start = dict.fromkeys(NODE_TYPES, 0)
    outputs = []
    for group in groups:
        n, s = len(group), group.structure
        parts = []
        for t in NODE_TYPES:
            count, width = s.counts[TYPE_INDEX[t]], embedded[t].shape[-1]
            parts.append(embedded[t][start[t] : start[t] + n * count].reshape(n, count, width))
            start[t] += n * count
        outputs.append(policy.heads(torch.cat(parts, dim=1), s.rows(SEED), s.rows(BLUEPRINT)))
    return outputs


def _masks_on(masks: ActionMasks, device: torch.device) -> ActionMasks:
    return ActionMasks(masks.action.to(device), masks.seed.to(device), masks.blueprint.to(device))


class GraphPolicyEvaluator:
    """Evaluates :class:`GraphTransitions` under a :class:`ReferencePolicy`."""

    def __init__(self, policy: ReferencePolicy) -> None:
        self.policy = policy

    @property
    def module(self) -> nn.Module:
        return self.policy

    def evaluate(self, inputs: GraphTransitions, indices: Tensor) -> Evaluation:
        device = next(self.policy.parameters()).device
        indices = indices.cpu()
        group_ids, rows = inputs.group_of[indices], inputs.row_of[indices]
        selected: list[GraphGroup] = []
        positions: list[Tensor] = []
        for k in torch.unique(group_ids).tolist():
            where = torch.nonzero(group_ids == k).squeeze(1)
            selected.append(inputs.groups[k].select(rows[where]))
            positions.append(where)
        outputs = evaluate_groups(self.policy, selected)
        log_probs, entropies, values = [], [], []
        for group, out in zip(selected, outputs, strict=True):
            masks = _masks_on(group.masks, device)
            log_probs.append(batch_log_prob(out, masks, group.actions.to(device)))
            entropies.append(batch_entropy(out, masks))
            values.append(out.value.float())
        # Back from group order to the order of ``indices``.
        order = torch.argsort(torch.cat(positions)).to(device)
        return Evaluation(
            torch.cat(log_probs)[order], torch.cat(entropies)[order], torch.cat(values)[order]
        )
