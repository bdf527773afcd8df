"""Issue 17's figures: rejections are visible in Nissa. A service under Weatherlight
that refuses an entry emits the rejection as an event; Weatherlight forwards its
services' events as telemetry, and Nissa counts each rejection by source, kind, reason
and stream in /metrics and lists the latest on its status page."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from consumers.nissa.service import NissaSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tests.telemetry.helpers import wait_until
from tests.telemetry.test_nissa import get
from weatherlight.services import Weatherlight, WeatherlightSettings, default_services
from weatherlight.supervisor import SupervisorSettings

REJECTION_SERIES = 'nissa_rejections_total{kind="message_rejected",reason="unknown_key"'


async def test_a_rejected_entry_is_counted_and_listed_by_nissa(
    bus: Bus, settings: OonaSettings, signer: Signer, keyring: Keyring
) -> None:
    base = WeatherlightSettings()
    services = replace(base, nissa=replace(base.nissa, port=0, tick_interval_s=0.05))
    weatherlight = Weatherlight(
        default_services(services), oona=settings, signer=signer, keyring=keyring,
        instance="wl-rejections", settings=SupervisorSettings(restart_backoff_base_ms=10.0),
    )  # fmt: skip
    await weatherlight.start()
    url = weatherlight.status_url
    assert url
    try:
        forged = make_envelope(
            stream=Stream.TELEMETRY, message_type=pb.MESSAGE_TYPE_TELEMETRY, payload=b"",
            source="tolaria",
        )  # fmt: skip
        raw = seal(forged, Signer.generate(), namespace=settings.key_prefix)
        await bus.redis.xadd(bus.key(Stream.TELEMETRY), {SINGLE_FIELD: raw})

        async def counted() -> bool:
            _, body = await get(url + "/metrics")
            return REJECTION_SERIES in body.decode()

        await wait_until(counted, timeout_s=20.0)

        _, body = await get(url + "/metrics")
        [line] = [row for row in body.decode().splitlines() if row.startswith(REJECTION_SERIES)]
        assert 'stream="telemetry"' in line and line.endswith(" 1.0")
        _, status = await get(url + "/api/status")
        [latest] = json.loads(status)["rejections"]["latest"]
        assert (latest["kind"], latest["reason"]) == ("message_rejected", "unknown_key")
    finally:
        await asyncio.wait_for(weatherlight.stop(), 30)


def test_the_default_services_forward_their_events() -> None:
    names = [spec.name for spec in default_services(WeatherlightSettings(nissa=NissaSettings()))]
    assert "events" in names
