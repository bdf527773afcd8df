"""The simulator speaks the real contracts: its packets carry what Tolaria and Kasmina
put in theirs, the unchanged graph builder and policy decide on them, and its rewards
are what a loop computes from the packets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from oona.keys import Signer
from tamiyo_bus.decision import propose_command
from tamiyo_bus.learning.reward import Progress, interval_terms, reward
from tamiyo_bus.policy.baselines import RandomPolicy
from tamiyo_bus.policy.serving import ServingPolicy
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.rollout import graph_builder
from tests.integration.helpers import ScriptedController, assemble, lifecycle_rule, trainer
from tests.policy.helpers import SMALL
from tests.sim.helpers import QUIET, germinate, seed_command, start_blending

S = pb.SeedLifecycleStage


def _key_shape(key: str) -> str:
    return re.sub(r"^(layer|parameter)/[^/]+/", r"\1/*/", key)


def _contents(packets: list[pb.SystemStatePacket]) -> tuple[set[str], set[str], set[str], set[str]]:
    """(packet fields, metric key shapes, seed-state fields, seed metric keys) set in any."""
    fields, keys, seed_fields, seed_metrics = set(), set(), set(), set()
    for packet in packets:
        fields |= {f.name for f, _ in packet.ListFields()}
        keys |= {_key_shape(k) for k in packet.training_metrics}
        for seed in packet.seed_states:
            seed_fields |= {f.name for f, _ in seed.ListFields()}
            seed_metrics |= set(seed.metrics)
    return fields, keys, seed_fields, seed_metrics


def _simulated_packets() -> list[pb.SystemStatePacket]:
    """Packets of a simulated run walking one seed into BLENDING."""
    sim = VectorSim(QUIET, seed=2)
    packets = list(sim.reset())
    plan = [
        germinate("layer3.s0", "mlp-res-8"),
        germinate("layer0.s0", "conv-res-8"),
        seed_command("layer3.s0", pb.SEED_OP_START_TRAINING),
    ] + [start_blending("layer3.s0")] * 8
    for command in plan:
        packets.extend(sim.step([command]).packets)
    assert packets[-1].seed_states[3].stage == S.SEED_STAGE_BLENDING
    return packets


def test_packets_carry_the_fields_and_keys_tolaria_and_kasmina_fill(
    tmp_path: Path, signer: Signer
) -> None:
    parts = assemble(tmp_path, signer)
    seed_id = next(iter(parts.kasmina.seeds))
    controller = ScriptedController(signer, lifecycle_rule(seed_id, "mlp-res-8"))
    trainer(parts, controller, max_steps=40).run()
    real = controller.packets
    assert "loss_delta" in real[-1].seed_states[0].metrics  # blended: every field in use
    assert _contents(_simulated_packets()) == _contents(real)


def test_the_unchanged_graph_builder_and_policy_decide_on_a_simulated_packet() -> None:
    sim = VectorSim(seed=0)
    packets = sim.reset()
    builder = graph_builder(sim)
    graph = builder.build(packets[0], sim.blueprint_metadata)
    assert graph.seed_ids == sim.host.seed_ids
    assert graph.coverage["layer"] > 0.5 and graph.coverage["parameter"] > 0.5
    conv = [i for i, kind in enumerate(sim.host.layer_kinds) if kind == "conv2d"]
    allowed = {graph.blueprint_ids[b] for b in torch.nonzero(graph.masks.blueprint[conv[0]])[:, 0]}
    assert allowed == {"conv-res-8", "conv-res-32"}
    assert "mlp-res-512" not in {
        graph.blueprint_ids[int(b)] for b in graph.masks.blueprint.nonzero()[:, 1]
    }
    policy = ServingPolicy(SMALL)
    torch.manual_seed(0)
    inference = policy.decide(graph, greedy=False, generator=torch.Generator().manual_seed(0))
    assert bool(graph.masks.action[inference.action.action])
    assert torch.isfinite(torch.tensor(inference.log_prob))


def test_interval_rewards_are_what_a_loop_computes_from_the_packets() -> None:
    settings = SimSettings(epochs=4)
    sim = VectorSim(settings, runs=2, seed=5)
    builder = graph_builder(sim)
    packets = sim.reset()
    policy, generator = RandomPolicy(), torch.Generator().manual_seed(5)
    events = 0
    while True:
        commands = []
        for packet in packets:
            graph = builder.build(packet, sim.blueprint_metadata)
            inference = policy.decide(graph, generator=generator)
            commands.append(propose_command(inference, graph, "breaker"))
        step = sim.step(commands)
        for run, (before, after) in enumerate(zip(packets, step.packets, strict=True)):
            terms = interval_terms(
                Progress.of_packet(before),
                Progress.of_packet(after),
                rollbacks=int(step.rollbacks[run]),
                emergencies=int(step.emergencies[run]),
                isolation_violations=int(step.isolation_violations[run]),
            )
            assert step.rewards[run] == pytest.approx(reward(terms, settings.reward), abs=1e-5)
            events += terms.rollbacks + terms.emergencies + terms.isolation_violations
        if step.done:
            break
        packets = step.packets
    assert events > 0  # the comparison covered the penalty terms too
