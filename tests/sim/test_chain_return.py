"""What the seed chain is worth over an episode, by a scripted policy that knows the
hidden deficits: germinating well (at the deficit layer, a fitting blueprint, then
start training, then start blending) earns clearly more than no-op on every run even
though the interval reward charges the seed's parameters at once; germinating on a
healthy layer earns less than no-op. Each next step of the chain is allowed by the
masks the policy decides under."""

from __future__ import annotations

import numpy as np

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.policy.actions import ACTION_SPACE, SEED_COLUMN
from tamiyo_bus.sim import SimSettings, VectorSim
from tamiyo_bus.sim.packets import model_parameters
from tamiyo_bus.sim.rollout import graph_builder
from tests.sim.helpers import NO_OP, germinate, seed_command, start_blending

RUNS = 8
SEED = 11
SETTINGS = SimSettings()
FIRST_STEP = 100  # germinate once the host's own fast learning is behind it
CHAIN = (pb.SEED_OP_GERMINATE, pb.SEED_OP_START_TRAINING, pb.SEED_OP_START_BLENDING)
COLUMN = {
    spec.seed_operation: SEED_COLUMN[index]
    for index, spec in enumerate(ACTION_SPACE)
    if spec.needs_seed
}


def _blueprint(sim: VectorSim, run: int, layer: int) -> str:
    """The fitting blueprint with the best cure for its parameters (hidden knowledge)."""
    host, state = sim.host, sim.state
    need = state.deficit_need[run, layer] * host.layer_parameters[layer]
    sizes = host.adapter_parameters[:, layer]
    fitting = [
        b
        for b, size in enumerate(sizes)
        if size > 0 and not host.metadata[host.blueprints[b].blueprint_id].quarantined
    ]
    best = min(fitting, key=lambda b: (abs(float(sizes[b]) - need), sizes[b]))
    return host.blueprints[best].blueprint_id


def _episode(layer_of_run: list[int] | None) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Returns per run, the seeds' final share of the parameters (what the reward
    charged for them) per run, and whether every chain command was allowed by the masks
    (``layer_of_run`` None: no-op throughout)."""
    sim = VectorSim(SETTINGS, runs=RUNS, seed=SEED)
    builder = graph_builder(sim)
    packets = sim.reset()
    returns = np.zeros(RUNS)
    done_ops = [0] * RUNS
    allowed = [True] * RUNS
    while True:
        commands = []
        for run, packet in enumerate(packets):
            if layer_of_run is None or done_ops[run] == len(CHAIN) or sim.step_index < FIRST_STEP:
                commands.append(NO_OP)
                continue
            layer = layer_of_run[run]
            seed_id = f"layer{layer}.s0"
            operation = CHAIN[done_ops[run]]
            masks = builder.build(packet, sim.blueprint_metadata).masks
            allowed[run] &= bool(masks.seed[sim.host.seed_index[seed_id], COLUMN[operation]])
            if operation == pb.SEED_OP_GERMINATE:
                commands.append(germinate(seed_id, _blueprint(sim, run, layer)))
            elif operation == pb.SEED_OP_START_TRAINING:
                commands.append(seed_command(seed_id, operation))
            else:
                commands.append(start_blending(seed_id, alpha_steps=32))
        step = sim.step(commands)
        returns += step.rewards
        for run, result in enumerate(step.results):
            if commands[run] is not NO_OP and result.applied:
                done_ops[run] += 1
        if step.done:
            model = model_parameters(sim.host, sim.state)
            return returns, 1.0 - sim.host.host_parameters / model, allowed
        packets = step.packets


def test_germinating_well_pays_over_the_episode_and_a_misplaced_seed_costs() -> None:
    probe = VectorSim(SETTINGS, runs=RUNS, seed=SEED)
    probe.reset()
    deficits = probe.state.deficit_loss
    deficit = [int(row.argmax()) for row in deficits]
    healthy = [int(np.flatnonzero(row == 0.0)[0]) for row in deficits]

    no_op, _, _ = _episode(None)
    good, share, allowed = _episode(deficit)
    misplaced, _, _ = _episode(healthy)

    gain = good - no_op
    print(f"gain over no-op: {np.round(gain, 3)}; parameter share: {np.round(share, 3)}")
    assert all(allowed), "a chain step was masked out"
    assert (gain > 0.05).all() and gain.mean() > 0.25
    assert (share > 0).all()  # the seeds' parameters were charged ...
    assert gain.mean() > 5 * share.mean()  # ... and repaid many times over
    assert (misplaced - no_op).mean() < 0
