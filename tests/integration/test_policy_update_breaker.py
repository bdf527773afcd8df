"""Rejected PolicyUpdates reach the step path: the demo's policy-update listener counts
rejections on the breaker the risk gate adopts, so a run of them puts the run in
conservative mode while the running policy stays as it was."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import torch

from leyline_vocab.roles import ROLES
from oona.breaker import BreakerSettings, BreakerState
from oona.bus import Bus
from oona.events import BufferedEventSink
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from tamiyo_bus import initial_policy
from tamiyo_bus.risk import BreakerName
from tamiyo_bus.security.policy_update import build_policy_update, publish_policy_update
from tamiyo_bus.urza.store import UrzaSettings, UrzaStore
from weatherlight.demo.assembly import RunSpec, assemble
from weatherlight.demo.services import AsyncSide
from weatherlight.role_keys import RoleKeys

REJECTIONS_TO_OPEN = 2


async def test_rejected_policy_updates_open_the_adopted_breaker_and_enter_conservative_mode(
    tmp_path: Path, settings: OonaSettings, signer: Signer, keyring: Keyring, bus: Bus
) -> None:
    holder = initial_policy(torch.device("cpu"), seed=0)
    side = AsyncSide(
        oona=settings, keys=RoleKeys(dict.fromkeys(ROLES, signer), keyring),
        run_id="policy-breaker",
        run_dir=tmp_path, holder=holder,
        policy_update_breaker=BreakerSettings(REJECTIONS_TO_OPEN, 60_000.0, 1),
    )  # fmt: skip
    side.start()
    try:
        events = BufferedEventSink()
        run = assemble(
            RunSpec(epochs=1), run_id="policy-breaker", signer=signer, keyring=keyring,
            store=UrzaStore.open_seeded(UrzaSettings(db_path=tmp_path / "urza.sqlite")),
            holder=holder, events=events, adopted_breakers=side.breakers,
        )  # fmt: skip
        gate = run.tamiyo.risk
        breaker = gate.breakers[BreakerName.POLICY_UPDATE]
        assert breaker is side.policy_update_breaker
        opened = threading.Event()

        def on_transition(_: str, __: BreakerState, new: BreakerState) -> None:
            if new is BreakerState.OPEN:
                opened.set()

        breaker.subscribe(on_transition)
        running = holder.current()
        stranger = Signer.generate()  # not in the keyring: every update is rejected
        for version in range(2, 2 + REJECTIONS_TO_OPEN):
            update = build_policy_update(
                {"weight": torch.zeros(1)}, policy_id="forged", version=version,
                architecture_id=running.architecture_id,
                registry_digest=running.registry_digest, signer=stranger,
            )  # fmt: skip
            await publish_policy_update(bus, update)

        assert await asyncio.to_thread(opened.wait, 30.0)
        assert gate.conservative.active and gate.conservative.cause == "breaker.policy_update"
        assert [(e.name, e.attributes.get("breaker", "")) for e in events.drain()][:2] == [
            ("breaker_opened", "policy_update"),
            ("conservative_entered", ""),
        ]
        assert holder.current() is running
    finally:
        side.stop()
