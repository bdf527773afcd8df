"""The lean SystemStatePacket Tolaria builds after each optimiser step.

Lean means: what the policy's features read and nothing that costs more than a few
tensor reductions. The per-parameter gradient norms are the ones the trainer computed
for gradient clipping anyway (one fused ``_foreach_norm``); the packet costs one host
transfer of them, and per-layer norms are derived from them. Activation statistics
are left out (their features then read as absent).
"""

from __future__ import annotations

import math
import time

import torch

from leyline_pb import leyline_pb2 as pb
from oona.ids import new_message_id
from tamiyo_bus.tolaria.models import HostModel, named_host_parameters

PACKET_VERSION = 1


class PacketBuilder:
    def __init__(self, model: HostModel, training_run_id: str) -> None:
        self.training_run_id = training_run_id
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
        ``parameter_norms`` the gradient norm of each of ``parameters`` (in order)."""
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
        if parameter_norms is not None:
            values = parameter_norms.tolist()
            layer_sq = [0.0] * len(self._layer_keys)
            for key, layer, value in zip(self._parameter_keys, self._layer_of, values, strict=True):
                out[key] = value
                layer_sq[layer] += value * value
            for key, total in zip(self._layer_keys, layer_sq, strict=True):
                out[key] = math.sqrt(total)
        return packet
