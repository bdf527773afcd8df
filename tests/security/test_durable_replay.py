"""Attack class 4 of issue 17, durability: the replay ledger and the highest applied
policy version survive a restart of the consumer and of the server, and replays of
an old update are rejected without opening the policy-update breaker."""

from __future__ import annotations

from pathlib import Path

import pytest

from leyline_pb import leyline_pb2 as pb
from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker
from oona.bus import Bus
from oona.connection import open_redis
from oona.consumer import Consumer
from oona.errors import RejectedMessage
from oona.keys import Keyring, Signer
from oona.server import EmbeddedServer, ServerError
from oona.settings import OonaSettings
from oona.streams import Stream
from tamiyo_bus.security.policy_update import (
    PolicyUpdateListener,
    PolicyUpdateSettings,
    PolicyUpdateTransaction,
    build_policy_update,
    publish_policy_update,
)
from tests.bus.helpers import Recorder, subscription
from weatherlight.settings import (
    ENV_DATA_DIR,
    ENV_REDIS_APPENDFSYNC,
    ENV_REDIS_APPENDONLY,
    SystemSettings,
)

from .helpers import ARCHITECTURE, REGISTRY, make_holder, small_policy

TELEMETRY = pb.MESSAGE_TYPE_TELEMETRY


def _update(signer: Signer, version: int) -> pb.PolicyUpdate:
    return build_policy_update(
        small_policy(version).state_dict(), policy_id="policy-a", version=version,
        architecture_id=ARCHITECTURE, registry_digest=REGISTRY, signer=signer,
    )  # fmt: skip


async def test_the_replay_ledger_survives_a_restart_of_the_embedded_server(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    """The embedded server persists by default, so the ledger that marks an envelope
    applied is still there after the server restarts."""
    server = EmbeddedServer(data_dir=tmp_path / "server").start()
    settings = OonaSettings(redis_url=server.url, read_block_ms=20)
    try:
        bus = Bus(open_redis(server.url, settings), settings, signer, source="t")
        await bus.publish(TELEMETRY, b"once", stream=Stream.NORMAL)
        [(_, fields)] = await bus.redis.xrange(bus.key(Stream.NORMAL))
        first = Recorder()
        await Consumer(bus, subscription(Stream.NORMAL), first, keyring).drain()
        await bus.close()
        server.stop()
        server.start()
        bus = Bus(open_redis(server.url, settings), settings, signer, source="t")
        await bus.redis.xadd(bus.key(Stream.NORMAL), fields)  # the same signed envelope
        again = Recorder()

        await Consumer(bus, subscription(Stream.NORMAL), again, keyring).drain()

        assert (first.payloads, again.payloads) == ([b"once"], [])
        assert bus.metrics.count("rejected", stream=Stream.NORMAL, reason="replay") == 1
        await bus.close()
    finally:
        server.cleanup()


def test_the_highest_applied_version_survives_a_restart_of_the_consumer(
    tmp_path: Path, signer: Signer, keyring: Keyring
) -> None:
    settings = PolicyUpdateSettings(version_record_path=tmp_path / "policy_version")
    first = PolicyUpdateTransaction(make_holder(version=1), keyring, settings)
    first.apply(_update(signer, version=3))

    restarted = make_holder(version=1)  # a new process starts from its initial policy
    transaction = PolicyUpdateTransaction(restarted, keyring, settings)
    for version in (2, 3):  # an older update, then the applied one again
        with pytest.raises(RejectedMessage, match="not_newer"):
            transaction.apply(_update(signer, version=version))
    assert restarted.current().version == 1
    transaction.apply(_update(signer, version=4))
    assert restarted.current().version == 4


async def test_replays_of_an_old_update_are_refused_without_opening_the_breaker(
    bus: Bus, signer: Signer, keyring: Keyring, tmp_path: Path
) -> None:
    """Each replay comes after its ledger key was deleted, so it reaches the update
    transaction; a replay is an attack on the bus, not a fault of the updater."""
    breaker = CircuitBreaker("policy_update", BreakerSettings(failure_threshold=3))
    holder = make_holder(version=1)
    transaction = PolicyUpdateTransaction(holder, keyring, breaker=breaker)
    listener = PolicyUpdateListener(bus, transaction, keyring)
    await publish_policy_update(bus, _update(signer, version=2))
    await listener.consumer.drain()
    [(_, fields)] = await bus.redis.xrange(bus.key(Stream.POLICY))
    for _ in range(3):
        for key in await bus.redis.keys(f"{bus.settings.key_prefix}:seen:*"):
            await bus.redis.delete(key)
        await bus.redis.xadd(bus.key(Stream.POLICY), fields)
        await listener.consumer.drain()

    await publish_policy_update(bus, _update(signer, version=3))
    await listener.consumer.drain()

    assert breaker.state is BreakerState.CLOSED
    assert holder.current().version == 3
    assert bus.metrics.count("rejected", stream=Stream.POLICY, reason="not_newer") == 3


def test_the_embedded_server_persists_by_default_and_the_environment_can_say_otherwise() -> None:
    assert (OonaSettings().appendonly, OonaSettings().appendfsync) == (True, "everysec")
    environ = {ENV_REDIS_APPENDONLY: "off", ENV_REDIS_APPENDFSYNC: "always", ENV_DATA_DIR: "/srv/t"}

    system = SystemSettings.from_env(environ)

    assert (system.oona.appendonly, system.oona.appendfsync) == (False, "always")
    record = system.policy_update.version_record_path
    assert record == Path("/srv/t/tamiyo/policy_version.json")
    with pytest.raises(ServerError, match="appendfsync"):
        EmbeddedServer(appendfsync="no")
