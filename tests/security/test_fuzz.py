"""Properties over every decoder an unauthenticated writer's bytes reach (issue 17,
total decoding): opening an entry, each message decoder behind it, the policy update
and its weights, the field-report log. Whatever the input, the only exception is
RejectedMessage; an opened batch never holds more envelopes than the limit."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leyline_pb import leyline_pb2 as pb
from oona.envelope import (
    BATCH_FIELD,
    MAX_ENVELOPES_PER_BATCH,
    SINGLE_FIELD,
    open_entry,
    seal,
    seal_batch,
)
from oona.errors import RejectedMessage

from .fuzz_targets import DECODERS, KEYRING, NAMESPACE, NOW_NS, RULES, SIGNER, run_target

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@PROPERTY
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_nothing_but_a_rejection(decoder: str, data: bytes) -> None:
    run_target(decoder, data)


envelopes = st.builds(
    pb.BusEnvelope,
    message_id=st.text(max_size=12),
    message_type=INT32,
    source=st.text(max_size=12),
    priority=INT32,
    issued_at_ns=INT64,
    stream=st.sampled_from(["telemetry", "policy", ""]),
    payload=st.binary(max_size=64),
    key_id=st.sampled_from([SIGNER.key_id, "", "ed25519:0000"]),
    signature=st.binary(max_size=80),
)


@PROPERTY
@given(envelope=envelopes, signed=st.booleans())
def test_any_single_envelope_opens_or_is_rejected(envelope: pb.BusEnvelope, signed: bool) -> None:
    """Signed with the trusted key, so the header checks after the signature run too."""
    raw = seal(envelope, SIGNER, namespace=NAMESPACE) if signed else envelope.SerializeToString()
    try:
        opened = open_entry({SINGLE_FIELD: raw}, RULES, KEYRING, now_ns=NOW_NS)
    except RejectedMessage:
        return
    assert opened.envelopes[0].issued_at_ns >= NOW_NS - RULES.max_age_ms * 1e6


@PROPERTY
@given(batch=st.lists(envelopes, max_size=MAX_ENVELOPES_PER_BATCH + 8), signed=st.booleans())
def test_any_batch_opens_within_the_limit_or_is_rejected(
    batch: list[pb.BusEnvelope], signed: bool
) -> None:
    if signed and batch:
        raw = seal_batch(batch, SIGNER, namespace=NAMESPACE)
    else:
        unsigned = pb.EnvelopeBatch(batch_id="b", key_id=SIGNER.key_id, signature=b"x" * 64)
        unsigned.envelopes.extend(batch)
        raw = unsigned.SerializeToString()
    try:
        opened = open_entry({BATCH_FIELD: raw}, RULES, KEYRING, now_ns=NOW_NS)
    except RejectedMessage:
        return
    assert signed and 0 < len(opened.envelopes) <= MAX_ENVELOPES_PER_BATCH
