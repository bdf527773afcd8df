"""A passed candidate as a signed PolicyUpdate on the policy stream.

Versions only grow: a candidate's version is above every version this learner
published and every policy version seen in the experience (a Tamiyo may run a policy
from elsewhere), so Tamiyo's transaction, which refuses anything not newer than what
it ever installed, accepts it. The learner records the version durably before the
update is published; a publish the bus refuses is retried with a freshly signed update
of the same version and weights (Tamiyo judges freshness by the signed issue time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from leyline_pb import leyline_pb2 as pb
from oona.backoff import Backoff
from oona.bus import Bus
from oona.errors import BusUnavailable, StreamFull
from oona.keys import Signer
from tamiyo_bus.policy.registry import registry_digest
from tamiyo_bus.security.policy_update import build_policy_update, publish_policy_update

log = logging.getLogger(__name__)


def next_version(published: int, seen: int) -> int:
    """Strictly above every version published and every version seen in experience."""
    return max(published, seen) + 1


@dataclass(frozen=True)
class Candidate:
    """Weights that passed the gate, under the version recorded for them."""

    weights: Mapping[str, torch.Tensor]
    version: int


class PolicyPublisher:
    """Signs candidates with Simic's key and publishes them."""

    def __init__(
        self,
        bus: Bus,
        signer: Signer,
        *,
        policy_id: str,
        architecture_id: str,
        retry_base_s: float = 0.2,
        retry_max_s: float = 10.0,
    ) -> None:
        self.bus = bus
        self.signer = signer
        self.policy_id = policy_id
        self.architecture_id = architecture_id
        self.published = 0
        self._backoff = Backoff(retry_base_s, retry_max_s)

    def build(self, candidate: Candidate) -> pb.PolicyUpdate:
        return build_policy_update(
            candidate.weights,
            policy_id=self.policy_id,
            version=candidate.version,
            architecture_id=self.architecture_id,
            registry_digest=registry_digest(),
            signer=self.signer,
        )

    async def publish(self, candidate: Candidate, stop: asyncio.Event) -> bool:
        """Publish until the bus takes it (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            try:
                await publish_policy_update(self.bus, self.build(candidate))
            except (BusUnavailable, StreamFull) as error:
                delay_s = self._backoff.next_s()
                log.warning("policy %d not published (%s); retrying", candidate.version, error)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay_s)
                except TimeoutError:
                    continue
                return False
            self._backoff.reset()
            self.published += 1
            return True
        return False
