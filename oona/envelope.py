"""Bus envelopes: what is signed, how entries are laid out in a stream, and how a
consumer turns a raw entry back into verified envelopes.

A stream entry holds either one signed envelope (field ``e``) or a signed batch of
envelopes (field ``b``). The signature covers an explicit, length-prefixed encoding
of the deployment's namespace (its key prefix), every header field and the payload
(`signing_bytes`), not protobuf's serialisation, so it does not depend on how a
protobuf library orders fields, and an entry copied into another deployment on the
same server does not verify there.

Opening an entry is total: whatever bytes a writer without a key puts in it, the
result is the verified envelopes or a RejectedMessage naming why, never another
exception. Size and envelope count are checked before anything is parsed.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leyline_pb import leyline_pb2 as pb
from oona.errors import RejectedMessage
from oona.ids import new_message_id
from oona.keys import Keyring, Role, Signer
from oona.wire import WireError, count_field

SINGLE_FIELD = b"e"
BATCH_FIELD = b"b"
_DOMAIN_SINGLE = b"tamiyo-bus/envelope/v2"
_DOMAIN_BATCH = b"tamiyo-bus/envelope-batch/v2"
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")  # proto3 enums are open int32s: negative values parse
_I64 = struct.Struct(">q")
_BATCH_ENVELOPES_FIELD = pb.EnvelopeBatch.DESCRIPTOR.fields_by_name["envelopes"].number
_BATCH_OTHER_FIELDS = 8  # batch id, key id, signature, and room for a newer schema's

MAX_ENVELOPES_PER_BATCH = 64
"""The most envelopes one batch may carry (the producer's batch size)."""


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def signing_bytes(env: pb.BusEnvelope, namespace: str) -> bytes:
    """The exact bytes an envelope's signature covers: the namespace and everything in
    the envelope but the signature. Total over any parsed envelope."""
    return b"".join(
        (
            _field(namespace.encode()),
            _field(env.message_id.encode()),
            _I32.pack(env.message_type),
            _field(env.source.encode()),
            _I32.pack(env.priority),
            _I64.pack(env.issued_at_ns),
            _field(env.stream.encode()),
            _field(env.key_id.encode()),
            _field(env.payload),
        )
    )


def batch_signing_bytes(
    namespace: str, batch_id: str, key_id: str, envelopes: Iterable[pb.BusEnvelope]
) -> bytes:
    """The exact bytes a batch signature covers: the batch id, key id and every
    envelope, in `namespace`."""
    parts = [_DOMAIN_BATCH, _field(batch_id.encode()), _field(key_id.encode())]
    parts.extend(_field(signing_bytes(env, namespace)) for env in envelopes)
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


def seal(env: pb.BusEnvelope, signer: Signer, *, namespace: str) -> bytes:
    """Sign one envelope for `namespace` (the deployment's key prefix) and return the
    bytes stored in the entry's ``e`` field."""
    env.key_id = signer.key_id
    env.signature = signer.sign(_DOMAIN_SINGLE + signing_bytes(env, namespace))
    return env.SerializeToString()


def seal_batch(envelopes: Sequence[pb.BusEnvelope], signer: Signer, *, namespace: str) -> bytes:
    """Sign envelopes together for `namespace` and return the bytes stored in the
    entry's ``b`` field."""
    batch = pb.EnvelopeBatch(batch_id=new_message_id(), key_id=signer.key_id)
    for env in envelopes:
        env.key_id = signer.key_id
        env.ClearField("signature")
    batch.envelopes.extend(envelopes)
    signed = batch_signing_bytes(namespace, batch.batch_id, signer.key_id, envelopes)
    batch.signature = signer.sign(signed)
    return batch.SerializeToString()


@dataclass(frozen=True)
class EnvelopeRules:
    """What a consumer accepts on one stream of one deployment (`namespace`, the key
    prefix); checked before any payload is parsed.

    Freshness is judged by the envelope's signed ``issued_at`` against the receiver's
    clock, never by the stream entry id, which whoever writes to the server may
    choose. The size and envelope-count bounds are checked before any envelope is
    parsed.
    """

    stream: str
    namespace: str
    accepted_types: frozenset[pb.MessageType.ValueType]
    max_entry_bytes: int = 1024 * 1024
    max_envelopes_per_batch: int = MAX_ENVELOPES_PER_BATCH
    max_age_ms: float = 60_000.0
    max_future_ms: float = 5_000.0


def type_name(message_type: int) -> str:
    """The message type's name, or its number when this schema does not know it."""
    try:
        return pb.MessageType.Name(message_type)  # type: ignore[arg-type]
    except ValueError:
        return f"MESSAGE_TYPE_{message_type}"


def _check_header(
    env: pb.BusEnvelope,
    rules: EnvelopeRules,
    role: Role,
    now_ns: int,
    authorised: set[tuple[int, str]],
) -> None:
    """Stream, type, id, freshness, then the signer's role (`authorised` remembers the
    (type, source) pairs of this entry already allowed: a batch's envelopes share
    them)."""
    if env.stream != rules.stream:
        raise RejectedMessage("wrong_stream", f"addressed to {env.stream[:80]!r}")
    if env.message_type not in rules.accepted_types:
        raise RejectedMessage("wrong_type", type_name(env.message_type))
    if not env.message_id:
        raise RejectedMessage("malformed", "empty message id")
    age_ms = (now_ns - env.issued_at_ns) / 1e6
    if age_ms > rules.max_age_ms:
        raise RejectedMessage("stale", f"issued {age_ms:.0f} ms before it was checked")
    if -age_ms > rules.max_future_ms:
        raise RejectedMessage("future", f"issued {-age_ms:.0f} ms after it was checked")
    if (env.message_type, env.source) in authorised:
        return
    if not role.may_publish(env.stream, env.message_type):
        raise RejectedMessage(
            "unauthorised_signer", f"role {role.name} may not publish {type_name(env.message_type)}"
        )
    if not role.may_claim(env.source):
        raise RejectedMessage(
            "unauthorised_signer", f"role {role.name} may not claim source {env.source[:80]!r}"
        )
    authorised.add((env.message_type, env.source))


@dataclass(frozen=True)
class OpenedEntry:
    """A verified entry. `unit_id` names what was signed as one unit: the message id of
    a single envelope, the batch id of a batch. Envelopes cannot be moved between
    batches without the private key, so replay and progress are tracked per unit.
    `role` is what the signer's key is trusted as."""

    unit_id: str
    envelopes: list[pb.BusEnvelope]
    role: Role


def _known_signer(keyring: Keyring, key_id: str, signature: bytes) -> None:
    """Reject what cannot verify before the bytes a signature covers are built."""
    if not signature:
        raise RejectedMessage("missing_signature")
    keyring.role_of(key_id)


def _open_single(raw: bytes, rules: EnvelopeRules, keyring: Keyring) -> OpenedEntry:
    env = pb.BusEnvelope.FromString(raw)
    _known_signer(keyring, env.key_id, env.signature)
    signed = _DOMAIN_SINGLE + signing_bytes(env, rules.namespace)
    role = keyring.verify(env.key_id, signed, env.signature)
    return OpenedEntry(env.message_id, [env], role)


def _open_batch(raw: bytes, rules: EnvelopeRules, keyring: Keyring) -> OpenedEntry:
    limit = rules.max_envelopes_per_batch
    count = count_field(
        raw, _BATCH_ENVELOPES_FIELD, limit=limit, max_fields=limit + _BATCH_OTHER_FIELDS
    )
    if count > limit:
        raise RejectedMessage("too_many_envelopes", f"more than {limit} envelopes")
    if count == 0:
        raise RejectedMessage("malformed", "empty batch")
    batch = pb.EnvelopeBatch.FromString(raw)
    envelopes = list(batch.envelopes)
    if any(env.key_id != batch.key_id for env in envelopes):
        raise RejectedMessage("invalid_signature", "envelope key id differs from batch")
    _known_signer(keyring, batch.key_id, batch.signature)
    signed = batch_signing_bytes(rules.namespace, batch.batch_id, batch.key_id, envelopes)
    role = keyring.verify(batch.key_id, signed, batch.signature)
    return OpenedEntry("batch:" + batch.batch_id, envelopes, role)


def open_entry(
    fields: dict[bytes, bytes], rules: EnvelopeRules, keyring: Keyring, *, now_ns: int
) -> OpenedEntry:
    """Verify a raw stream entry and return its envelopes (payloads not yet parsed).

    Raises RejectedMessage and nothing else, whatever `fields` hold."""
    raw_single = fields.get(SINGLE_FIELD)
    raw_batch = fields.get(BATCH_FIELD)
    if (raw_single is None) == (raw_batch is None):
        raise RejectedMessage("malformed", "an entry holds exactly one of fields e and b")
    raw = raw_single if raw_single is not None else raw_batch
    assert raw is not None
    if len(raw) > rules.max_entry_bytes:
        raise RejectedMessage("oversized", f"{len(raw)} > {rules.max_entry_bytes} bytes")
    try:
        opened = (
            _open_single(raw, rules, keyring)
            if raw_single is not None
            else _open_batch(raw, rules, keyring)
        )
        authorised: set[tuple[int, str]] = set()
        for env in opened.envelopes:
            try:
                _check_header(env, rules, opened.role, now_ns, authorised)
            except RejectedMessage as signed:  # verified: what it claims is its signer's
                raise RejectedMessage(
                    signed.reason, signed.detail, priority=env.priority, source=env.source[:80]
                ) from None
    except RejectedMessage:
        raise
    except WireError as exc:
        raise RejectedMessage("malformed", str(exc)) from None
    except Exception as exc:  # a parser or packer error on hostile bytes, whatever its type
        raise RejectedMessage("malformed", f"{type(exc).__name__}: {exc}"[:500]) from None
    return opened
