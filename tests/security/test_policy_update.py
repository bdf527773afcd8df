"""The PolicyUpdate transaction: a valid update is installed atomically with the old
policy kept for rollback; every invalid one is rejected with its reason, emitted and
counted, and leaves the running weights bit-identical. No payload is ever unpickled."""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from leyline_pb import leyline_pb2 as pb
from leyline_vocab.events import EventKind
from oona.breaker import BreakerSettings, BreakerState, CircuitBreaker
from oona.bus import Bus
from oona.errors import RejectedMessage
from oona.events import MESSAGE_REJECTED, BufferedEventSink
from oona.keyfiles import KeySettings
from oona.keys import Keyring, Signer
from oona.signed import POLICY_UPDATE_DOMAIN, sign_message
from oona.streams import Stream
from tamiyo_bus.security.policy_update import (
    PolicyUpdateListener,
    PolicyUpdateTransaction,
    RollbackUnavailable,
    build_policy_update,
    publish_policy_update,
)

from .helpers import (
    ARCHITECTURE,
    REGISTRY,
    dead_letters,
    make_holder,
    make_transaction,
    small_policy,
    weight_bytes,
)

SECOND_NS = 1_000_000_000


class _CreatesFileWhenUnpickled:
    """What a malicious PolicyUpdate of the earlier system could carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _update(signer: Signer, version: int = 2, seed: int = 1, **fields: object) -> pb.PolicyUpdate:
    update = build_policy_update(
        small_policy(seed).state_dict(), policy_id="policy-a", version=version,
        architecture_id=ARCHITECTURE, registry_digest=REGISTRY, signer=signer,
    )  # fmt: skip
    if fields:
        for name, value in fields.items():
            setattr(update, name, value)
        if "payload" in fields and "payload_sha256" not in fields:
            update.payload_sha256 = hashlib.sha256(update.payload).hexdigest()
        sign_message(POLICY_UPDATE_DOMAIN, update, signer)  # a validly signed bad update
    return update


def _weights(seed: int, **changes: torch.Tensor) -> bytes:
    from safetensors.torch import save

    state = {k: v.clone() for k, v in small_policy(seed).state_dict().items()}
    state.update(changes)
    for name in [k for k, v in changes.items() if v.numel() == 0]:
        del state[name]
    return save(state)


def test_valid_update_is_installed_with_old_kept_for_rollback(
    signer: Signer, keyring: Keyring
) -> None:
    holder = make_holder(version=1)
    original = holder.current()
    transaction, metrics, events = make_transaction(holder, keyring)

    installed = transaction.apply(_update(signer, version=2, seed=1))

    assert holder.current() is installed and installed.version == 2
    assert weight_bytes(installed.module) == weight_bytes(small_policy(1))
    assert installed.module is not original.module
    assert weight_bytes(original.module) == weight_bytes(small_policy(0))  # never written
    assert holder.previous is original
    [applied] = events.drain()
    assert applied.name == EventKind.POLICY_UPDATE_APPLIED
    assert (applied.attributes["old_version"], applied.attributes["new_version"]) == ("1", "2")
    assert metrics.count("policy_updates_applied") == 1

    restored = transaction.rollback("rollback_command")
    assert holder.current() is original and restored is original
    [rolled_back] = events.drain()
    assert rolled_back.name == EventKind.POLICY_ROLLED_BACK
    assert rolled_back.attributes["from_version"] == "2"
    with pytest.raises(RollbackUnavailable):
        transaction.rollback("again")
    with pytest.raises(RejectedMessage, match="not_newer"):
        transaction.apply(_update(signer, version=2, seed=1))  # the bad version cannot return


def test_a_decision_keeps_its_snapshot_while_an_update_lands(
    signer: Signer, keyring: Keyring
) -> None:
    holder = make_holder()
    transaction, _, _ = make_transaction(holder, keyring)
    x = torch.ones(2, 4)
    in_flight = holder.current()  # taken at the start of a decision
    before = in_flight.module(x)

    transaction.apply(_update(signer, version=2, seed=1))

    assert torch.equal(in_flight.module(x), before)
    assert not torch.equal(holder.current().module(x), before)


def _rejections(signer: Signer, tmp_path: Path) -> dict[str, pb.PolicyUpdate]:
    stranger = Signer.generate()
    tampered = _update(signer)
    tampered.payload = _weights(2)
    tampered.payload_sha256 = hashlib.sha256(tampered.payload).hexdigest()
    unsigned = _update(signer)
    unsigned.ClearField("signature")
    nan = torch.full((3, 8), float("nan"))
    return {
        "missing_signature": unsigned,
        "unknown_key": _update(stranger),
        "invalid_signature": tampered,
        "stale": _update(signer, issued_at_ns=1),
        "future": _update(signer, issued_at_ns=2**62),
        "not_newer": _update(signer, version=1),
        "architecture_mismatch": _update(signer, architecture_id="gnn/v9"),
        "registry_mismatch": _update(signer, registry_digest="sha256:registry-b"),
        "unsupported_format": _update(signer, payload_format="pickle"),
        "digest_mismatch": _update(signer, payload_sha256="0" * 64),
        "malformed_payload": _update(signer, payload=b"\x10\x00\x00\x00\x00\x00\x00\x00{bad"),
        "tensor_names_mismatch": _update(signer, payload=_weights(1, **{"2.bias": torch.empty(0)})),
        "tensor_shape_mismatch": _update(signer, payload=_weights(1, **{"2.bias": torch.ones(4)})),
        "tensor_dtype_mismatch": _update(
            signer, payload=_weights(1, **{"2.bias": torch.ones(3, dtype=torch.float64)})
        ),
        "non_finite_weights": _update(signer, payload=_weights(1, **{"2.weight": nan})),
        "pickle_payload": _update(
            signer, payload=pickle.dumps(_CreatesFileWhenUnpickled(tmp_path / "pwned"))
        ),
    }


def test_every_failed_update_leaves_the_weights_bit_identical(
    signer: Signer, keyring: Keyring, tmp_path: Path
) -> None:
    holder = make_holder()
    running = holder.current()
    before = weight_bytes(running.module)
    transaction, metrics, events = make_transaction(holder, keyring)
    cases = _rejections(signer, tmp_path)

    for reason, update in cases.items():
        with pytest.raises(RejectedMessage) as rejected:
            transaction.apply(update)
        assert rejected.value.reason == reason, rejected.value
        assert holder.current() is running
        assert weight_bytes(running.module) == before

    assert holder.previous is None
    for reason in cases:
        assert metrics.count("policy_updates_rejected", reason=reason) == 1
    emitted = events.drain()
    assert {e.name for e in emitted} == {EventKind.POLICY_UPDATE_REJECTED}
    assert [e.attributes["reason"] for e in emitted] == list(cases)
    assert metrics.count("policy_updates_applied") == 0


def test_pickle_payloads_are_never_unpickled(
    signer: Signer, keyring: Keyring, tmp_path: Path
) -> None:
    control, target = tmp_path / "control", tmp_path / "target"
    pickle.loads(pickle.dumps(_CreatesFileWhenUnpickled(control))).close()
    assert control.exists()  # the payload really would create a file if unpickled
    torch_archive = io.BytesIO()
    torch.save({"weights": _CreatesFileWhenUnpickled(target)}, torch_archive)
    bare = pickle.dumps(_CreatesFileWhenUnpickled(target))
    holder = make_holder()
    before = weight_bytes(holder.current().module)
    transaction, _, _ = make_transaction(holder, keyring)
    attempts = {
        "pickle_payload": (bare, "safetensors"),
        "unsupported_format": (bare, "pickle"),
        "unsupported_format ": (torch_archive.getvalue(), "torch"),
        "pickle_payload ": (torch_archive.getvalue(), "safetensors"),
    }

    for reason, (payload, payload_format) in attempts.items():
        update = _update(signer, payload=payload, payload_format=payload_format)
        with pytest.raises(RejectedMessage) as rejected:
            transaction.apply(update)
        assert rejected.value.reason == reason.strip()

    assert not target.exists()
    assert weight_bytes(holder.current().module) == before


def test_freshness_is_the_signed_issue_time_against_the_receivers_clock(
    signer: Signer, keyring: Keyring
) -> None:
    holder = make_holder()
    update = _update(signer)
    now_ns = update.issued_at_ns + 120 * SECOND_NS
    transaction, _, _ = make_transaction(holder, keyring, clock_ns=lambda: now_ns)

    with pytest.raises(RejectedMessage, match="stale"):
        transaction.apply(update)
    now_ns = update.issued_at_ns + SECOND_NS
    transaction.apply(update)
    assert holder.current().version == 2


async def test_listener_applies_a_published_update_and_dead_letters_a_bad_one_once(
    bus: Bus, signer: Signer, keyring: Keyring
) -> None:
    holder = make_holder()
    events = BufferedEventSink()
    transaction = PolicyUpdateTransaction(holder, keyring, metrics=bus.metrics, events=events)
    listener = PolicyUpdateListener(bus, transaction, keyring, consumer_name="tamiyo-1")
    await publish_policy_update(bus, _update(signer, version=2, seed=1))
    await publish_policy_update(bus, _update(signer, version=2, seed=2))  # not newer
    await bus.publish(pb.MESSAGE_TYPE_POLICY_UPDATE, b"\xff\xff", stream=Stream.POLICY)
    await bus.publish(pb.MESSAGE_TYPE_TELEMETRY, b"", stream=Stream.POLICY)  # wrong type

    await listener.consumer.drain()

    assert holder.current().version == 2
    assert weight_bytes(holder.current().module) == weight_bytes(small_policy(1))
    dead = await dead_letters(bus, Stream.POLICY)
    assert sorted(record[b"reason"] for record in dead) == [
        b"malformed_payload", b"not_newer", b"wrong_type"
    ]  # fmt: skip
    assert all(record[b"attempts"] == b"1" for record in dead)
    assert listener.consumer.retries_scheduled == 0
    assert (await bus.redis.xpending(bus.key(Stream.POLICY), "tamiyo"))["pending"] == 0
    policy_events = [e.name for e in events.drain() if e.name != MESSAGE_REJECTED]
    assert policy_events == [
        EventKind.POLICY_UPDATE_APPLIED,
        EventKind.POLICY_UPDATE_REJECTED,
        EventKind.POLICY_UPDATE_REJECTED,
    ]
    assert bus.metrics.count("rejected") == 3  # each also counted and evented by the bus
    assert bus.metrics.count("policy_updates_rejected", reason="not_newer") == 1


def test_repeated_rejections_open_the_policy_update_breaker(
    signer: Signer, keyring: Keyring
) -> None:
    holder = make_holder(version=1)
    breaker = CircuitBreaker("policy_update", BreakerSettings(failure_threshold=2))
    transaction = PolicyUpdateTransaction(holder, keyring, breaker=breaker)
    stranger = Signer.generate()
    for _ in range(2):
        with pytest.raises(RejectedMessage, match="unknown_key"):
            transaction.apply(_update(stranger, version=2, seed=1))

    assert breaker.state is BreakerState.OPEN
    with pytest.raises(RejectedMessage, match="breaker_open"):
        transaction.apply(_update(signer, version=2, seed=1))  # valid, but refused for now
    assert holder.current().version == 1


async def test_the_start_up_listener_counts_rejections_on_the_given_breaker(
    bus: Bus, signer: Signer
) -> None:
    trusted = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    breaker = CircuitBreaker("policy_update", BreakerSettings(failure_threshold=1))
    listener = PolicyUpdateListener.from_key_settings(
        bus,
        make_holder(version=1),
        KeySettings(trusted_keys=(f"simic={trusted}",)),
        breaker=breaker,
    )
    with pytest.raises(RejectedMessage, match="unknown_key"):
        listener.transaction.apply(_update(Signer.generate(), version=2, seed=1))
    assert breaker.state is BreakerState.OPEN
