"""Issue 18, finding 7: rejections that matter are seen, and dead letters are bounded.

A CRITICAL message refused after its signature verified (a producer whose clock is
skewed: `stale` or `future`) raises a CRITICAL alert in Nissa at once and makes
`/healthz` say so; any growth of a dead-letter stream raises `dead_letters_growing`.
Each dead-letter stream keeps at most `dead_letter_max_entries` records, none older
than `dead_letter_max_age_ms`, and every record trimmed is counted."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from consumers.nissa.health import HealthSettings
from leyline_pb import leyline_pb2 as pb
from oona.bus import Bus
from oona.consumer import Consumer
from oona.envelope import SINGLE_FIELD, make_envelope, seal
from oona.keys import Keyring, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from tests.bus.helpers import Recorder, subscription
from tests.telemetry.helpers import critical_packet, wait_until
from tests.telemetry.test_nissa import get
from weatherlight.services import Weatherlight, WeatherlightSettings, default_services
from weatherlight.supervisor import SupervisorSettings

SKEW_NS = 120 * 10**9  # the producer's clock is two minutes ahead


async def test_a_critical_message_from_a_skewed_clock_raises_an_alert_and_fails_healthz(
    bus: Bus, settings: OonaSettings, signer: Signer, keyring: Keyring
) -> None:
    base = WeatherlightSettings()
    state = replace(base.nissa.state, health=HealthSettings(hub_silence_s=60.0))
    nissa = replace(base.nissa, port=0, tick_interval_s=0.05, lag_interval_s=0.1, state=state)
    weatherlight = Weatherlight(
        default_services(replace(base, nissa=nissa)), oona=settings, signer=signer,
        keyring=keyring, instance="wl-skew", settings=SupervisorSettings(),
    )  # fmt: skip
    await weatherlight.start()
    url = weatherlight.status_url
    assert url
    try:

        async def sampled() -> bool:  # Nissa's baseline of the dead-letter streams is taken
            _, body = await get(url + "/healthz")
            return "taken_s" in json.loads(body)["bus_lag"]

        await wait_until(sampled)
        skewed = make_envelope(
            stream=Stream.EMERGENCY, message_type=pb.MESSAGE_TYPE_TELEMETRY,
            payload=critical_packet("run-1", "seed-1").SerializeToString(), source="kasmina",
            priority=pb.MESSAGE_PRIORITY_CRITICAL, issued_at_ns=time.time_ns() + SKEW_NS,
        )  # fmt: skip
        raw = seal(skewed, signer, namespace=settings.key_prefix)
        await bus.redis.xadd(bus.key(Stream.EMERGENCY), {SINGLE_FIELD: raw})

        async def alerts() -> dict[str, dict[str, object]]:
            _, body = await get(url + "/alerts")
            return {a["name"]: a for a in json.loads(body)["active"]}

        async def both_firing() -> bool:
            names = await alerts()
            return "weatherlight.message_rejected" in names and "dead_letters_growing" in names

        await wait_until(both_firing, timeout_s=20.0)
        firing = await alerts()
        rejected = firing["weatherlight.message_rejected"]
        assert rejected["severity"] == "critical"
        assert rejected["attributes"]["reason"] == "future"  # type: ignore[index]
        assert rejected["attributes"]["source"] == "kasmina"  # type: ignore[index]
        assert firing["dead_letters_growing"]["labels"] == {"stream": "emergency"}
        status, body = await get(url + "/healthz")
        assert status == 503
        problems = json.loads(body)["problems"]
        assert any("urgent message rejected" in p and "future" in p for p in problems)
    finally:
        await asyncio.wait_for(weatherlight.stop(), 30)


async def _forged(bus: Bus, count: int) -> None:
    stranger = Signer.generate()
    for i in range(count):
        env = make_envelope(
            stream=Stream.NORMAL, message_type=pb.MESSAGE_TYPE_TELEMETRY, payload=b"%d" % i,
            source="t",
        )  # fmt: skip
        raw = seal(env, stranger, namespace=bus.settings.key_prefix)
        await bus.redis.xadd(bus.key(Stream.NORMAL), {SINGLE_FIELD: raw})


async def test_a_dead_letter_stream_is_bounded_by_length_and_age_and_trims_are_counted(
    bus: Bus, keyring: Keyring
) -> None:
    bus.settings = bus.settings.with_overrides(dead_letter_max_entries=5)
    dead = bus.dead_letter_key(Stream.NORMAL)
    await bus.redis.xadd(dead, {"reason": "from long ago"}, id="1-0")  # older than any age bound
    await _forged(bus, 8)

    await Consumer(bus, subscription(Stream.NORMAL), Recorder(), keyring).drain()

    kept = await bus.redis.xrange(dead)
    assert len(kept) == 5
    assert all(record[b"reason"] == b"unknown_key" for _, record in kept)
    trimmed = bus.metrics.count
    assert trimmed("dead_letters_trimmed", stream=Stream.NORMAL, bound="age") == 1
    assert trimmed("dead_letters_trimmed", stream=Stream.NORMAL, bound="length") == 3
    assert bus.metrics.count("dead_lettered", stream=Stream.NORMAL, reason="unknown_key") == 8
