"""The policy as the step path runs it: canonical weights plus their fast packing (replayed
from CUDA graphs on a GPU, tamiyo_bus.policy.cuda_graph).

``ServingPolicy`` is a :class:`ReferencePolicy` (so PolicyUpdates, checkpoints and the
learner see the same parameters) that repacks its :class:`FastPolicy` whenever its
weights are loaded. A PolicyUpdate transaction deep-copies the running module and
loads the new weights into the copy, so the packing happens there, off the step path,
and the swapped-in policy is ready for its first decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.nn.modules.module import _IncompatibleKeys

from tamiyo_bus.policy.actions import PolicyAction, log_prob, select_action
from tamiyo_bus.policy.cuda_graph import GraphedForward
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.network import Cancelled, FastPolicy
from tamiyo_bus.policy.reference import PolicyConfig, ReferencePolicy

COMPILE_STATE = "eager-fused"  # no torch.compile: see FastPolicy (per-kernel cost, not FLOPs)


@dataclass(frozen=True, slots=True)
class Inference:
    """One decision of the policy, with what learning and the risk engine need."""

    action: PolicyAction
    log_prob: float
    value: float
    expected_severity: float  # risk head, in [0, 1]


class DecisionPolicy(Protocol):
    """What decides on a graph: a ServingPolicy or a baseline."""

    def decide(
        self,
        graph: PolicyGraph,
        *,
        greedy: bool = True,
        generator: torch.Generator | None = None,
        cancelled: Cancelled | None = None,
    ) -> Inference: ...


class ServingPolicy(ReferencePolicy):
    """A ReferencePolicy that keeps an inference packing in step with its weights."""

    compile_state = COMPILE_STATE

    def __init__(
        self, config: PolicyConfig | None = None, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(config)
        self.serving_device = torch.device(device)
        self.eval()
        self._repack()

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        result: _IncompatibleKeys = super().load_state_dict(state_dict, strict, assign)
        self._repack()
        return result

    def _repack(self) -> None:
        """The inference packing of the current weights (and its CUDA graphs on a GPU)."""
        self.fast = FastPolicy(self, self.serving_device)
        self.forward_graphed = GraphedForward(self.fast)

    def decide(
        self,
        graph: PolicyGraph,
        *,
        greedy: bool = True,
        generator: torch.Generator | None = None,
        cancelled: Cancelled | None = None,
    ) -> Inference:
        """Forward pass, masked choice and its log-probability, all without autograd.

        Raises :class:`InferenceCancelled` once ``cancelled()`` is True (see FastPolicy).
        """
        out = self.forward_graphed(graph, cancelled)
        with torch.inference_mode():
            if out.value.device.type != "cpu":
                out = out.to("cpu")
            action = select_action(out, graph.masks, greedy=greedy, generator=generator)
            return Inference(
                action,
                float(log_prob(out, graph.masks, action)),
                float(out.value),
                float(out.expected_severity()),
            )
