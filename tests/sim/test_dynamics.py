"""The simulator's dynamics: good seeds help, poor ones do not, instability and risk
spike the loss, deficits show in the gradients, and a seed makes it reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.baselines import RandomPolicy
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.dynamics import learn, seed_cure, uncured_deficit
from tamiyo_bus.sim.rollout import graph_builder, run_episode
from tests.sim.helpers import (
    NO_OP,
    QUIET,
    deficit_layer,
    germinate,
    healthy_layer,
    seed_command,
    start_blending,
    with_deficit_on,
)

SHORT = dataclasses.replace(QUIET, epochs=6)


def _grow(sim: VectorSim, seed_id: str, blueprint_id: str) -> None:
    """Walk one seed to FOSSILIZED as soon as each gate allows."""
    plan = [
        germinate(seed_id, blueprint_id),
        seed_command(seed_id, pb.SEED_OP_START_TRAINING),
        start_blending(seed_id),
        seed_command(seed_id, pb.SEED_OP_ADVANCE),
        seed_command(seed_id, pb.SEED_OP_ADVANCE),
        seed_command(seed_id, pb.SEED_OP_FOSSILIZE),
    ]
    while plan:
        if sim.step([plan[0]]).results[0].applied:
            plan.pop(0)


def _finish(sim: VectorSim) -> pb.SystemStatePacket:
    while True:
        step = sim.step([NO_OP])
        if step.done:
            return step.packets[0]


def _final(settings: SimSettings, seed: int, grow: tuple[str, str] | None) -> tuple[float, float]:
    """(hidden true loss, reported validation loss) at the end of an episode."""
    sim = VectorSim(settings, seed=seed)
    sim.reset()
    if grow is not None:
        layer, blueprint = grow
        _grow(sim, f"layer{layer}.s0", blueprint)
    final = _finish(sim)
    return float(sim.state.true_loss[0]), final.validation_loss


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fitting_seed_at_the_deficit_layer_lowers_the_loss(seed: int) -> None:
    settings = with_deficit_on(SHORT, kind="linear")
    probe = VectorSim(settings, seed=seed)
    probe.reset()
    layer = deficit_layer(probe)
    deficit = float(probe.state.deficit_loss[0, layer])
    baseline_true, baseline_val = _final(settings, seed, None)
    grown_true, grown_val = _final(settings, seed, (str(layer), "mlp-res-64"))
    assert grown_true < baseline_true - 0.5 * deficit
    assert grown_val < baseline_val * 0.95


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_seed_on_a_healthy_layer_or_an_unfitting_blueprint_does_not_help(seed: int) -> None:
    settings = with_deficit_on(SHORT, kind="linear")
    probe = VectorSim(settings, seed=seed)
    probe.reset()
    healthy = healthy_layer(probe, "linear")
    layer = deficit_layer(probe)
    baseline_true, _ = _final(settings, seed, None)
    misplaced_true, _ = _final(settings, seed, (str(healthy), "mlp-res-64"))
    low_rank_true, _ = _final(settings, seed, (str(layer), "lowrank-4"))
    fitting_true, _ = _final(settings, seed, (str(layer), "mlp-res-64"))
    assert misplaced_true >= baseline_true  # nothing gained, a little harm
    assert low_rank_true - fitting_true > 0.3 * float(probe.state.deficit_loss[0, layer])


def _loss_after_germinating(settings: SimSettings) -> tuple[float, float]:
    """(true loss one decision after a NO_OP, the same after a germination)."""
    losses = []
    for command in (NO_OP, germinate("layer3.s0", "mlp-res-8")):
        sim = VectorSim(settings, seed=4)
        sim.reset()
        sim.step([command])
        losses.append(float(sim.state.true_loss[0]))
    return losses[0], losses[1]


def test_germinating_during_instability_spikes_the_loss() -> None:
    shaky = dataclasses.replace(
        QUIET.dynamics,
        instability_onset_per_step=1.0,
        instability_steps_min=1_000,
        instability_steps_max=1_000,
        instability_level_min=1.0,
        instability_level_max=1.0,
    )
    calm, germinated = _loss_after_germinating(dataclasses.replace(QUIET, dynamics=shaky))
    assert germinated > 1.3 * calm


def test_a_calm_germination_leaves_the_loss_alone() -> None:
    calm, germinated = _loss_after_germinating(QUIET)
    assert germinated == pytest.approx(calm)


def test_blending_a_risky_blueprint_can_spike_the_loss() -> None:
    certain = dataclasses.replace(QUIET.dynamics, blend_spike_probability_per_risk=100.0)
    settings = with_deficit_on(dataclasses.replace(QUIET, dynamics=certain), kind="conv2d")
    spikes = {}
    for blueprint in ("conv-res-8", "conv-res-32"):
        sim = VectorSim(settings, seed=4)
        sim.reset()
        for command in (
            germinate("layer0.s0", blueprint),
            seed_command("layer0.s0", pb.SEED_OP_START_TRAINING),
        ):
            sim.step([command])
        while not sim.step([start_blending("layer0.s0")]).results[0].applied:
            pass
        spikes[blueprint] = float(sim.state.spike_loss[0] / sim.state.true_loss[0])
    risk_8, risk_32 = 0.1, 0.25
    assert spikes["conv-res-32"] > spikes["conv-res-8"] > 0.0
    assert spikes["conv-res-32"] / spikes["conv-res-8"] == pytest.approx(risk_32 / risk_8, rel=0.3)


def test_a_deficit_layer_shows_a_sustained_larger_gradient_norm() -> None:
    sim = VectorSim(QUIET, runs=8, seed=6)
    packets = sim.reset()
    signal = np.zeros((8, sim.host.layers))
    for _ in range(30):
        for run, packet in enumerate(packets):
            norms = [packet.training_metrics[k] for k in sim.host.layer_gradient_keys]
            signal[run] += np.array(norms) / np.sqrt(sim.host.layer_parameters)
        packets = sim.step([NO_OP] * 8).packets
    deficit = sim.state.deficit_loss > 0
    strongest = signal.argmax(axis=1)
    assert deficit[np.arange(8), strongest].mean() >= 0.75
    ratio = signal[deficit].mean() / signal[~deficit].mean()
    assert ratio > 1.4


def test_the_same_seed_gives_the_same_episode_and_another_seed_another() -> None:
    def episode(seed: int) -> tuple[list[bytes], list[float]]:
        sim = VectorSim(dataclasses.replace(SimSettings(), epochs=3), runs=2, seed=seed)
        episodes = run_episode(
            sim,
            [RandomPolicy(), RandomPolicy()],
            graph_builder(sim),
            generator=torch.Generator().manual_seed(seed),
        )
        packets = [e.final_state.SerializeToString(deterministic=True) for e in episodes]
        rewards = [r.reward for e in episodes for r in e.records]
        return packets, rewards

    first, again, other = episode(7), episode(7), episode(8)
    assert first == again
    assert first[1] != other[1]


def test_learning_approaches_one_at_the_given_speed() -> None:
    progress = np.zeros(2)
    for _ in range(40):
        progress = learn(progress, np.array([1.0, 2.0]), 40.0)
    assert progress[0] == pytest.approx(1 - np.exp(-1.0))
    assert progress[1] == pytest.approx(1 - np.exp(-2.0))


def test_a_small_adapter_cures_only_its_share_and_cures_add_up_to_at_most_all() -> None:
    assert seed_cure(500.0, 10_000.0, 0.10, 1.0) == pytest.approx(0.5)
    assert seed_cure(5_000.0, 10_000.0, 0.10, 0.5) == pytest.approx(0.5)
    deficit = np.array([[0.2, 0.0]])
    left = uncured_deficit(deficit, np.array([[0.7, 0.6, 0.3, 0.0]]), slots_per_layer=2)
    assert left == pytest.approx(np.array([[0.0, 0.0]]))
    left = uncured_deficit(deficit, np.array([[0.25, 0.25, 0.0, 0.0]]), slots_per_layer=2)
    assert left == pytest.approx(np.array([[0.1, 0.0]]))
