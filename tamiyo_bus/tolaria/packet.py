"""The lean SystemStatePacket Tolaria builds after each optimiser step.

Lean means: what the policy's features read and nothing that costs more than a few
tensor reductions. The per-parameter gradient norms are the ones the trainer computed
for gradient clipping anyway (one fused ``_foreach_norm``); the packet costs one host
transfer of them, and per-layer norms are derived from them. Activation statistics
are left out (their features then read as absent).

Beside each gradient norm the packet carries its running average over the packets
built so far (``gradient_norm_ema``, per layer and global): one packet's norms are a
single batch's and swing with it, while a layer short of capacity shows a sustained
excess that only an average separates from that noise (docs/learning.md). Keeping
them costs a few multiply-adds per layer when a packet is built.
"""

from __future__ import annotations

import math
import time

import torch

from leyline_pb import leyline_pb2 as pb
from oona.ids import new_message_id
from tamiyo_bus.tolaria.models import HostModel, named_host_parameters

PACKET_VERSION = 1
GRADIENT_NORM_EMA = "gradient_norm_ema"  # the metric name of a gradient norm's running average


def running_average(previous: float, value: float, decay: float) -> float:
    """Exponential running average; the first value (``previous`` nan) as it is."""
    return value if math.isnan(previous) else decay * previous + (1.0 - decay) * value


class PacketBuilder:
    def __init__(
        self, model: HostModel, training_run_id: str, *, gradient_norm_ema_decay: float = 0.8
    ) -> None:
        self.training_run_id = training_run_id
        self.gradient_norm_ema_decay = gradient_norm_ema_decay
        named = named_host_parameters(model)
        self.parameters = [p for _, p in named]
        """Every host parameter, in topology order (the order norms are given in)."""
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if {id(p) for p in self.parameters} != trainable:
            raise ValueError("the host's layers must hold exactly its trainable parameters")
        self._parameter_keys = [f"parameter/{pid}/gradient_norm" for pid, _ in named]
        layer_ids = [pid.split(".", 1)[0] for pid, _ in named]
        self._layer_keys = [f"layer/{layer}/gradient_norm" for layer in dict.fromkeys(layer_ids)]
        order = {layer: i for i, layer in enumerate(dict.fromkeys(layer_ids))}
        self._layer_of = [order[layer] for layer in layer_ids]
        self._layer_ema_keys = [f"{key}_ema" for key in self._layer_keys]
        self._layer_ema = [math.nan] * len(self._layer_keys)
        self._gradient_norm_ema = math.nan

    def build(
        self,
        *,
        epoch: int,
        step: int,
        training_loss: float,
        validation_loss: float,
        validation_accuracy: float,
        metrics: dict[str, float],
        parameter_norms: torch.Tensor | None = None,
    ) -> pb.SystemStatePacket:
        """The packet of ``step``; ``metrics`` are the trainer's global measurements and
        ``parameter_norms`` the gradient norm of each of ``parameters`` (in order). The
        running averages take in this packet's gradient norms, where it has them."""
        packet = pb.SystemStatePacket(
            version=PACKET_VERSION,
            packet_id=new_message_id(),
            training_run_id=self.training_run_id,
            current_epoch=epoch,
            global_step=step,
            training_loss=training_loss,
            validation_loss=validation_loss,
            validation_accuracy=validation_accuracy,
            timestamp_ns=time.time_ns(),
        )
        out = packet.training_metrics
        out.update(metrics)
        decay = self.gradient_norm_ema_decay
        norm = metrics.get("gradient_norm", math.nan)
        if math.isfinite(norm):
            self._gradient_norm_ema = running_average(self._gradient_norm_ema, norm, decay)
            out[GRADIENT_NORM_EMA] = self._gradient_norm_ema
        if parameter_norms is not None:
            values = parameter_norms.tolist()
            layer_sq = [0.0] * len(self._layer_keys)
            for key, layer, value in zip(self._parameter_keys, self._layer_of, values, strict=True):
                out[key] = value
                layer_sq[layer] += value * value
            for layer, total in enumerate(layer_sq):
                layer_norm = math.sqrt(total)
                average = running_average(self._layer_ema[layer], layer_norm, decay)
                self._layer_ema[layer] = average
                out[self._layer_keys[layer]] = layer_norm
                out[self._layer_ema_keys[layer]] = average
        return packet
