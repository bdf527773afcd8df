"""Property: changing any byte of a signed envelope (single or batch entry) or of a
signed command makes it rejected; nothing tampered is ever accepted."""

from __future__ import annotations

import time

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leyline_pb import leyline_pb2 as pb
from oona.envelope import (
    BATCH_FIELD,
    SINGLE_FIELD,
    EnvelopeRules,
    make_envelope,
    open_entry,
    seal,
    seal_batch,
)
from oona.errors import RejectedMessage
from oona.keys import Keyring, Signer
from tamiyo_bus.security.commands import CommandSigner, CommandVerifier, stamp_command

from .helpers import seed_command

STREAM = "telemetry"
NAMESPACE = "tampering"
RULES = EnvelopeRules(
    stream=STREAM, namespace=NAMESPACE, accepted_types=frozenset({pb.MESSAGE_TYPE_TELEMETRY})
)
PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _envelope(payload: bytes) -> pb.BusEnvelope:
    return make_envelope(
        stream=STREAM, message_type=pb.MESSAGE_TYPE_TELEMETRY, payload=payload, source="tolaria"
    )


def _flip(raw: bytes, index: int, mask: int) -> bytes:
    tampered = bytearray(raw)
    tampered[index % len(raw)] ^= mask
    return bytes(tampered)


@pytest.fixture(scope="module")
def single_entry(signer: Signer) -> tuple[bytes, int]:
    env = _envelope(b"loss=0.25;step=17")
    return seal(env, signer, namespace=NAMESPACE), env.issued_at_ns


@pytest.fixture(scope="module")
def batch_entry(signer: Signer) -> tuple[bytes, int]:
    envelopes = [_envelope(f"metric-{i}".encode()) for i in range(3)]
    return seal_batch(envelopes, signer, namespace=NAMESPACE), envelopes[0].issued_at_ns


def test_untampered_entries_open(
    single_entry: tuple[bytes, int], batch_entry: tuple[bytes, int], keyring: Keyring
) -> None:
    single = open_entry({SINGLE_FIELD: single_entry[0]}, RULES, keyring, now_ns=single_entry[1])
    batch = open_entry({BATCH_FIELD: batch_entry[0]}, RULES, keyring, now_ns=batch_entry[1])
    assert [len(single.envelopes), len(batch.envelopes)] == [1, 3]


@PROPERTY
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_a_single_envelope_is_rejected(
    single_entry: tuple[bytes, int], keyring: Keyring, index: int, mask: int
) -> None:
    raw, now_ns = single_entry
    with pytest.raises(RejectedMessage):
        open_entry({SINGLE_FIELD: _flip(raw, index, mask)}, RULES, keyring, now_ns=now_ns)


@PROPERTY
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_a_batch_entry_is_rejected(
    batch_entry: tuple[bytes, int], keyring: Keyring, index: int, mask: int
) -> None:
    raw, now_ns = batch_entry
    with pytest.raises(RejectedMessage):
        open_entry({BATCH_FIELD: _flip(raw, index, mask)}, RULES, keyring, now_ns=now_ns)


@pytest.fixture(scope="module")
def signed_command(signer: Signer) -> tuple[bytes, int]:
    command = seed_command()
    stamp_command(command, "tamiyo")
    CommandSigner(signer).sign(command)
    return command.SerializeToString(), command.issued_at_ns


def test_untampered_command_verifies(signed_command: tuple[bytes, int], keyring: Keyring) -> None:
    raw, issued_at_ns = signed_command
    CommandVerifier(keyring, clock_ns=lambda: issued_at_ns).verify(
        pb.AdaptationCommand.FromString(raw)
    )


@PROPERTY
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_a_signed_command_is_rejected(
    signed_command: tuple[bytes, int], keyring: Keyring, index: int, mask: int
) -> None:
    raw, issued_at_ns = signed_command
    verifier = CommandVerifier(keyring, clock_ns=lambda: issued_at_ns)
    try:
        command = pb.AdaptationCommand.FromString(_flip(raw, index, mask))
    except DecodeError:
        return  # bytes that do not even parse never reach the executor
    with pytest.raises(RejectedMessage):
        verifier.verify(command)
    assert verifier.metrics.count("commands_verified") == 0


@PROPERTY
@given(
    field=st.sampled_from(["command_id", "issued_by", "target_seed_id", "reason"]),
    value=st.text(min_size=1, max_size=20),
)
def test_any_changed_field_of_a_signed_command_is_rejected(
    signer: Signer, keyring: Keyring, field: str, value: str
) -> None:
    command = seed_command()
    stamp_command(command, "tamiyo")
    CommandSigner(signer).sign(command)
    if getattr(command, field) == value:
        value += "!"
    setattr(command, field, value)
    verifier = CommandVerifier(keyring, clock_ns=time.time_ns)
    with pytest.raises(RejectedMessage) as rejected:
        verifier.verify(command)
    assert rejected.value.reason == "invalid_signature"
