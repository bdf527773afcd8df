"""The fast forward replayed from a captured CUDA graph.

On a GPU a forward of Tamiyo's small graphs is a few hundred short kernels: their launch
overhead, not their arithmetic, is the cost. A CUDA graph records the whole sequence
once and replays it with one launch. Capture needs fixed addresses, so the graph's
inputs live in static buffers sized for one topology; the graph is captured on the
first forward of a topology and captured again when the topology changes (a seed slot
added, a blueprint joining the catalogue). A capture is kept with its topology's
structure (``structure.derived``), so it lives exactly as long as the graph builder
keeps that structure. On a CPU, or when capture fails, the forward runs eagerly: the
same function, one launch per kernel.

A replayed forward cannot stop between layers, so it ignores ``cancelled``: on a GPU it
is short enough not to need to.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from tamiyo_bus.policy.actions import PolicyOutput
from tamiyo_bus.policy.graph import PolicyGraph
from tamiyo_bus.policy.network import Cancelled, FastPolicy

log = logging.getLogger(__name__)

WARM_UP_FORWARDS = 3  # eager forwards on a side stream before capture (allocator, cuBLAS)


@dataclass(slots=True)
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: Tensor  # static inputs, copied into before each replay
    edge_attr: Tensor
    out: PolicyOutput  # static outputs, written by each replay


class GraphedForward:
    """``FastPolicy``'s forward, replayed from CUDA graphs where the device allows."""

    def __init__(self, fast: FastPolicy, *, capture: bool = True) -> None:
        self.fast = fast
        self.capture = capture and fast.device.type == "cuda" and torch.cuda.is_available()
        self._key = f"cuda-graph:{id(self)}"
        self.captures = 0
        self.replays = 0

    def __call__(self, graph: PolicyGraph, cancelled: Cancelled | None = None) -> PolicyOutput:
        if not self.capture:
            return self.fast(graph, cancelled)
        captured = graph.structure.derived.get(self._key)
        if not isinstance(captured, _Captured):
            captured = self._capture(graph)
            if captured is None:
                return self.fast(graph, cancelled)
        with torch.inference_mode():
            captured.x.copy_(graph.x, non_blocking=True)
            captured.edge_attr.copy_(graph.edge_attr, non_blocking=True)
            captured.graph.replay()
        self.replays += 1
        return _copy(captured.out)

    def _capture(self, graph: PolicyGraph) -> _Captured | None:
        """Capture the forward of ``graph``'s topology; None (eager from now on) if the
        device refuses."""
        device = self.fast.device
        with torch.inference_mode():
            static = dataclasses.replace(
                graph, x=graph.x.to(device).clone(), edge_attr=graph.edge_attr.to(device).clone()
            )
            try:
                side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(WARM_UP_FORWARDS):
                        self.fast(static)
                torch.cuda.current_stream(device).wait_stream(side)
                cuda_graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(cuda_graph):
                    out = self.fast(static)
            except RuntimeError:
                log.exception("CUDA graph capture failed; the policy runs eagerly")
                self.capture = False
                return None
        captured = _Captured(cuda_graph, static.x, static.edge_attr, out)
        graph.structure.derived[self._key] = captured
        self.captures += 1
        return captured


def _copy(out: PolicyOutput) -> PolicyOutput:
    """The replay's outputs, copied out of the static buffers the next replay overwrites."""
    return PolicyOutput(*(getattr(out, f.name).clone() for f in dataclasses.fields(out)))
