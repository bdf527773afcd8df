"""Bus envelopes: what is signed, how entries are laid out in a stream, and how a
consumer turns a raw entry back into verified envelopes.

A stream entry holds either one signed envelope (field ``e``) or a signed batch of
envelopes (field ``b``). The signature covers an explicit, length-prefixed encoding
of every header field and the payload (`signing_bytes`), not protobuf's
serialisation, so it does not depend on how a protobuf library orders fields.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from leyline_pb import leyline_pb2 as pb
from oona.errors import RejectedMessage
from oona.ids import new_message_id
from oona.keys import Keyring, Signer

SINGLE_FIELD = b"e"
BATCH_FIELD = b"b"
_DOMAIN_SINGLE = b"tamiyo-bus/envelope/v1"
_DOMAIN_BATCH = b"tamiyo-bus/envelope-batch/v1"
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def signing_bytes(env: pb.BusEnvelope) -> bytes:
    """The exact bytes an envelope's signature covers (everything but the signature)."""
    return b"".join(
        (
            _field(env.message_id.encode()),
            _U32.pack(env.message_type),
            _field(env.source.encode()),
            _U32.pack(env.priority),
            _I64.pack(env.issued_at_ns),
            _field(env.stream.encode()),
            _field(env.key_id.encode()),
            _field(env.payload),
        )
    )


def batch_signing_bytes(batch_id: str, key_id: str, envelopes: Iterable[pb.BusEnvelope]) -> bytes:
    """The exact bytes a batch signature covers: the batch id, key id and every envelope."""
    parts = [_DOMAIN_BATCH, _field(batch_id.encode()), _field(key_id.encode())]
    parts.extend(_field(signing_bytes(env)) for env in envelopes)
    return b"".join(parts)


def make_envelope(
    *,
    stream: str,
    message_type: pb.MessageType.ValueType,
    payload: bytes,
    source: str,
    priority: pb.MessagePriority.ValueType = pb.MESSAGE_PRIORITY_NORMAL,
    message_id: str | None = None,
    issued_at_ns: int | None = None,
) -> pb.BusEnvelope:
    """An unsigned envelope with a fresh time-ordered id."""
    return pb.BusEnvelope(
        message_id=message_id or new_message_id(),
        message_type=message_type,
        source=source,
        priority=priority,
        issued_at_ns=time.time_ns() if issued_at_ns is None else issued_at_ns,
        stream=stream,
        payload=payload,
    )


def seal(env: pb.BusEnvelope, signer: Signer) -> bytes:
    """Sign one envelope and return the bytes stored in the entry's ``e`` field."""
    env.key_id = signer.key_id
    env.signature = signer.sign(_DOMAIN_SINGLE + signing_bytes(env))
    return env.SerializeToString()


def seal_batch(envelopes: Sequence[pb.BusEnvelope], signer: Signer) -> bytes:
    """Sign envelopes together and return the bytes stored in the entry's ``b`` field."""
    batch = pb.EnvelopeBatch(batch_id=new_message_id(), key_id=signer.key_id)
    for env in envelopes:
        env.key_id = signer.key_id
        env.ClearField("signature")
    batch.envelopes.extend(envelopes)
    batch.signature = signer.sign(batch_signing_bytes(batch.batch_id, signer.key_id, envelopes))
    return batch.SerializeToString()


@dataclass(frozen=True)
class EnvelopeRules:
    """What a consumer accepts; checked before any payload is parsed.

    Freshness is measured against the time the server assigned to the stream entry
    (its id), not against the time of consumption: a backlog that waited while its
    consumer was down is still fresh, while an old envelope re-added by a replayer
    gets a new entry id and is stale.
    """

    stream: str
    accepted_types: frozenset[pb.MessageType.ValueType]
    max_entry_bytes: int = 8 * 1024 * 1024
    max_age_ms: float = 60_000.0
    max_future_ms: float = 5_000.0


def _check_header(env: pb.BusEnvelope, rules: EnvelopeRules, entry_time_ms: int) -> None:
    if env.stream != rules.stream:
        raise RejectedMessage("wrong_stream", f"addressed to {env.stream!r}")
    if env.message_type not in rules.accepted_types:
        raise RejectedMessage("wrong_type", pb.MessageType.Name(env.message_type))
    if not env.message_id:
        raise RejectedMessage("malformed", "empty message id")
    skew_ms = entry_time_ms - env.issued_at_ns / 1e6
    if skew_ms > rules.max_age_ms:
        raise RejectedMessage("stale", f"issued {skew_ms:.0f} ms before it was enqueued")
    if -skew_ms > rules.max_future_ms:
        raise RejectedMessage("future", f"issued {-skew_ms:.0f} ms after it was enqueued")


@dataclass(frozen=True)
class OpenedEntry:
    """A verified entry. `unit_id` names what was signed as one unit: the message id of
    a single envelope, the batch id of a batch. Envelopes cannot be moved between
    batches without the private key, so replay and progress are tracked per unit."""

    unit_id: str
    envelopes: list[pb.BusEnvelope]


def open_entry(
    fields: dict[bytes, bytes],
    rules: EnvelopeRules,
    entry_time_ms: int,
    keyring: Keyring,
) -> OpenedEntry:
    """Verify a raw stream entry and return its envelopes (payloads not yet parsed)."""
    raw_single = fields.get(SINGLE_FIELD)
    raw_batch = fields.get(BATCH_FIELD)
    raw = raw_single if raw_single is not None else raw_batch
    if raw is None:
        raise RejectedMessage("malformed", "entry has no envelope field")
    if len(raw) > rules.max_entry_bytes:
        raise RejectedMessage("oversized", f"{len(raw)} > {rules.max_entry_bytes} bytes")
    try:
        if raw_single is not None:
            env = pb.BusEnvelope.FromString(raw)
            keyring.verify(env.key_id, _DOMAIN_SINGLE + signing_bytes(env), env.signature)
            envelopes = [env]
            unit_id = env.message_id
        else:
            batch = pb.EnvelopeBatch.FromString(raw)
            envelopes = list(batch.envelopes)
            if not envelopes:
                raise RejectedMessage("malformed", "empty batch")
            if any(env.key_id != batch.key_id for env in envelopes):
                raise RejectedMessage("invalid_signature", "envelope key id differs from batch")
            signed = batch_signing_bytes(batch.batch_id, batch.key_id, envelopes)
            keyring.verify(batch.key_id, signed, batch.signature)
            unit_id = "batch:" + batch.batch_id
    except DecodeError as exc:
        raise RejectedMessage("malformed", str(exc)) from None
    for env in envelopes:
        _check_header(env, rules, entry_time_ms)
    return OpenedEntry(unit_id, envelopes)
