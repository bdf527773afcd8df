"""Output heads shared by the fast policy and the PyG reference.

Both networks end in the same node embeddings; running the same head code on them
keeps the equivalence test about message passing, where the two implementations
differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tamiyo_bus.policy.actions import (
    BLEND_METHODS,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    LR_LOG_SCALE_MAX,
    NUM_ACTIONS,
    RISK_CLASSES,
    SEED_ACTIONS,
    PolicyOutput,
)

# Layout of the context head's output vector.
_A = NUM_ACTIONS
_BLEND = slice(_A, _A + len(BLEND_METHODS))
_ALPHA = _BLEND.stop
_LR = _ALPHA + 1
_VALUE = _LR + 1
_RISK = slice(_VALUE + 1, _VALUE + 1 + RISK_CLASSES)
CONTEXT_OUTPUTS = _RISK.stop
INITIAL_STD = 0.3


class PolicyHeads(nn.Module):
    """Graph-level heads from [global node, mean of all nodes]; per-node seed/blueprint
    logits from each node's own embedding."""

    def __init__(self, node_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.context_in = nn.Linear(2 * node_dim, hidden_dim)
        self.context_out = nn.Linear(hidden_dim, CONTEXT_OUTPUTS)
        self.node_out = nn.Linear(node_dim, len(SEED_ACTIONS) + 1)
        self.log_std = nn.Parameter(torch.full((2,), math.log(INITIAL_STD)))

    def forward(self, h: Tensor, seed_rows: slice, blueprint_rows: slice) -> PolicyOutput:
        """``h`` stacks every node's embedding in schema order ([N, D]); row 0 is the
        global node. Graphs of one structure may be stacked in front ([G, N, D]): every
        output then has a leading G axis (``log_std`` excepted)."""
        context = torch.cat((h[..., 0, :], h.mean(dim=-2)), dim=-1)
        hidden = F.relu(F.linear(context, self.context_in.weight, self.context_in.bias))
        z = F.linear(hidden, self.context_out.weight, self.context_out.bias)
        node = F.linear(h, self.node_out.weight, self.node_out.bias)
        span = LOG_ALPHA_MAX - LOG_ALPHA_MIN
        return PolicyOutput(
            action_logits=z[..., :_A],
            seed_logits=node[..., seed_rows, :-1],
            blueprint_logits=node[..., blueprint_rows, -1],
            blend_logits=z[..., _BLEND],
            alpha_log_steps_mean=LOG_ALPHA_MIN + span * torch.sigmoid(z[..., _ALPHA]),
            lr_log_scale_mean=LR_LOG_SCALE_MAX * torch.tanh(z[..., _LR]),
            log_std=self.log_std,
            value=z[..., _VALUE],
            risk_logits=z[..., _RISK],
        )
