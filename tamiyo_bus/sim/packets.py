"""What a simulated run shows: the SystemStatePackets Tolaria and Kasmina would emit.

The same fields and ``training_metrics`` keys as ``Tolaria.state_packet`` (losses,
gradient norms per layer and per parameter, the running averages of the layer and
global norms, samples/s, step and hook latency, learning rate, model parameters,
Kasmina's latencies and isolation violations), and one SeedState per slot filled as
``Kasmina.fill_seed_states`` fills it. Ids and timestamps are derived from the run and
the step, so a seeded simulation is reproducible.
Nothing hidden (deficits, what a seed can cure, instability) is ever written here.
"""

from __future__ import annotations

import math

import numpy as np

from leyline_pb import leyline_pb2 as pb
from tamiyo_bus.kasmina.lifecycle import HAS_MODULE
from tamiyo_bus.reports.windows import MODEL_PARAMETERS_METRIC, SEED_PARAMETERS_METRIC
from tamiyo_bus.sim.host import FloatArray, SimHost
from tamiyo_bus.sim.settings import HostSettings
from tamiyo_bus.sim.state import RunState, stage_table
from tamiyo_bus.tolaria.packet import GRADIENT_NORM_EMA, PACKET_VERSION

HAS_MODULE_TABLE = stage_table(HAS_MODULE)
APPLY_SHARE = 0.5  # of the hook time, what Kasmina's apply and finalize each report


def model_parameters(host: SimHost, state: RunState) -> FloatArray:
    """[N] host plus live seeds, as ``model_parameter_count`` reports it."""
    live = HAS_MODULE_TABLE[state.stage]
    total: FloatArray = host.host_parameters + np.where(live, state.parameters, 0).sum(axis=1)
    return total


def fill_seed_states(
    packet: pb.SystemStatePacket,
    sim: SimHost,
    state: RunState,
    run: int,
    step: int,
    learning_rate: float,
) -> None:
    """Every slot's SeedState, dormant ones too (``Kasmina.fill_seed_states``); a seed
    with an optimiser learns at ``learning_rate`` (the host's) times its ratio."""
    for seed, seed_id in enumerate(sim.seed_ids):
        stage = int(state.stage[run, seed])
        blueprint = int(state.blueprint[run, seed])
        layer = int(sim.seed_layer[seed])
        out = packet.seed_states.add(
            seed_id=seed_id,
            stage=pb.SeedLifecycleStage.ValueType(stage),
            layer_depth=layer,
            layer_id=sim.topology.layers[layer].layer_id,
            alpha=float(state.alpha[run, seed]),
            blueprint_id=sim.blueprints[blueprint].blueprint_id if blueprint >= 0 else "",
        )
        if stage in HAS_MODULE:
            out.gradient_norm = float(state.gradient_norm[run, seed])
            out.age = step - int(state.germinated_step[run, seed])
            out.risk_score = float(state.risk[run, seed])
            if stage != pb.SEED_STAGE_FOSSILIZED:
                out.learning_rate = learning_rate * float(state.lr_ratio[run, seed])
            metrics = out.metrics
            metrics["isolation_violations"] = float(state.isolation_violations[run, seed])
            metrics[SEED_PARAMETERS_METRIC] = float(state.parameters[run, seed])
            baseline = float(state.blend_baseline_loss[run, seed])
            if math.isfinite(baseline):
                metrics["loss_delta"] = float(state.kasmina_loss_ema[run]) - baseline


class PacketWriter:
    """Writes the packets of the runs of one simulated host."""

    def __init__(self, sim: SimHost, host: HostSettings, base_lr: float) -> None:
        self.sim = sim
        self.host = host
        self.base_lr = base_lr

    def _start(
        self, state: RunState, run: int, run_id: str, epoch: int, step: int
    ) -> tuple[pb.SystemStatePacket, float]:
        """The packet's header, and the run's learning rate."""
        packet = pb.SystemStatePacket(
            version=PACKET_VERSION,
            packet_id=f"{run_id}-{step}",
            training_run_id=run_id,
            current_epoch=epoch,
            global_step=step,
            training_loss=float(state.loss_ema[run]),
            validation_loss=float(state.validation_loss[run]),
            validation_accuracy=float(state.validation_accuracy[run]),
            timestamp_ns=round(step * self.host.step_ms * 1e6),
        )
        return packet, self.base_lr * float(state.lr_scale[run])

    def decision(
        self,
        state: RunState,
        run: int,
        run_id: str,
        *,
        epoch: int,
        step: int,
        layer_norms: FloatArray,
        violations: int,
    ) -> pb.SystemStatePacket:
        """The packet of ``step`` for run ``run`` (``layer_norms``: [L] this step's
        gradient norms; ``violations``: those the previous finalize found)."""
        sim, host = self.sim, self.host
        packet, learning_rate = self._start(state, run, run_id, epoch, step)
        live = int(HAS_MODULE_TABLE[state.stage[run]].sum())
        model = float(model_parameters(sim, state)[run])
        step_ms = host.step_ms * model / sim.host_parameters
        hook_ms = host.hook_ms * (1 + live)
        weight = layer_norms * np.sqrt(sim.weight_fraction)
        bias = layer_norms * np.sqrt(1.0 - sim.weight_fraction)
        metrics: dict[str, float] = {
            "loss": float(state.batch_loss[run]),
            "gradient_norm": float(np.sqrt((layer_norms * layer_norms).sum())),
            GRADIENT_NORM_EMA: float(state.gradient_norm_ema[run]),
            "samples_per_s": host.batch_size / (step_ms / 1000.0),
            "step_latency_ms": step_ms,
            "hook_latency_ms": hook_ms,
            "learning_rate": learning_rate,
            MODEL_PARAMETERS_METRIC: model,
            "kasmina_apply_latency_ms": APPLY_SHARE * hook_ms,
            "kasmina_finalize_latency_ms": APPLY_SHARE * hook_ms,
            "isolation_violations": float(violations),
        }
        metrics.update(zip(sim.weight_gradient_keys, weight.tolist(), strict=True))
        metrics.update(zip(sim.bias_gradient_keys, bias.tolist(), strict=True))
        metrics.update(zip(sim.layer_gradient_keys, layer_norms.tolist(), strict=True))
        averages = state.layer_norm_ema[run].tolist()
        metrics.update(zip(sim.layer_gradient_ema_keys, averages, strict=True))
        packet.training_metrics.update(metrics)
        fill_seed_states(packet, sim, state, run, step, learning_rate)
        return packet

    def epoch_end(
        self, state: RunState, run: int, run_id: str, *, epoch: int, step: int, train_loss: float
    ) -> pb.SystemStatePacket:
        """The run's state at the end of ``epoch`` (Tolaria's ``EpochRecord.state``): the
        epoch's mean training loss, validation figures, model parameters, seed states."""
        packet, learning_rate = self._start(state, run, run_id, epoch, step)
        packet.training_loss = train_loss
        packet.training_metrics[MODEL_PARAMETERS_METRIC] = float(
            model_parameters(self.sim, state)[run]
        )
        fill_seed_states(packet, self.sim, state, run, step, learning_rate)
        return packet
