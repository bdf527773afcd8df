"""The CUDA-graph forward: on a CPU it is the eager forward (the same function, the same
numbers); capture is attempted only on a CUDA device. No GPU is needed for these tests;
the captured path itself runs where a GPU is present (bench/step.py measures it)."""

from __future__ import annotations

import random

import pytest
import torch

from tamiyo_bus.policy.cuda_graph import GraphedForward
from tamiyo_bus.policy.features import RunningNormalizer
from tamiyo_bus.policy.graph import GraphBuilder
from tamiyo_bus.policy.serving import ServingPolicy
from tests import states
from tests.policy.helpers import SMALL


def test_on_a_cpu_the_graphed_forward_is_the_eager_forward() -> None:
    torch.manual_seed(0)
    policy = ServingPolicy(SMALL)
    assert not policy.forward_graphed.capture  # nothing to capture on a CPU
    size = states.REFERENCE_SIZE
    entries = states.catalogue(size)
    builder = GraphBuilder(
        states.topology(size), [m.blueprint_id for m in entries], RunningNormalizer(update=False)
    )
    metadata = {m.blueprint_id: m for m in entries}
    graph = builder.build(states.packet(size, builder.topology, random.Random(1)), metadata)
    graphed, eager = policy.forward_graphed(graph), policy.fast(graph)
    for name in ("action_logits", "seed_logits", "blueprint_logits", "value", "risk_logits"):
        assert torch.equal(getattr(graphed, name), getattr(eager, name))
    assert policy.forward_graphed.captures == 0 and policy.forward_graphed.replays == 0


def test_capture_is_only_attempted_on_a_cuda_device() -> None:
    policy = ServingPolicy(SMALL)
    assert not GraphedForward(policy.fast, capture=True).capture
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the captured path runs only on a GPU")
    on_gpu = ServingPolicy(SMALL, device="cuda")
    assert on_gpu.forward_graphed.capture
