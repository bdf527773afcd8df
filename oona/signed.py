"""Signatures carried inside a Leyline message (AdaptationCommand, PolicyUpdate).

Such a message has a ``signature`` field (a SignatureBlock: key id and Ed25519
signature). The signature covers a domain tag, the key id and the message serialised
deterministically with the signature field cleared. The domain tag keeps a signature
made for one kind of message from verifying as another kind whose bytes happen to
match; covering the key id means the signer, not whoever relays the message, chose
the key.

Deterministic serialisation sorts map entries, so the same message always gives the
same bytes in this process and in any peer running the same Leyline bindings. A field
the verifier does not know is kept as an unknown field and re-serialised, so a
message from a newer schema fails to verify rather than verifying with parts ignored.
"""

from __future__ import annotations

import functools
import struct
from typing import TypeVar

from leyline_pb import leyline_pb2 as pb
from oona.errors import RejectedMessage
from oona.keys import Keyring, Role, Signer

COMMAND_DOMAIN = b"tamiyo-bus/adaptation-command/v1"
POLICY_UPDATE_DOMAIN = b"tamiyo-bus/policy-update/v1"
_U32 = struct.Struct(">I")


SignedLeyline = TypeVar("SignedLeyline", pb.AdaptationCommand, pb.PolicyUpdate)
"""The Leyline messages that carry their own SignatureBlock."""


@functools.lru_cache(maxsize=64)
def _prefix(domain: bytes, key_id: str) -> bytes:
    key = key_id.encode()
    return _U32.pack(len(domain)) + domain + _U32.pack(len(key)) + key


def signed_bytes(domain: bytes, message: SignedLeyline, key_id: str) -> bytes:
    """The exact bytes a message signature covers: domain, key id, and the message
    serialised deterministically without its signature field."""
    unsigned = type(message)()
    unsigned.CopyFrom(message)
    unsigned.ClearField("signature")
    return _prefix(domain, key_id) + unsigned.SerializeToString(deterministic=True)


def sign_message(domain: bytes, message: SignedLeyline, signer: Signer) -> None:
    """Fill `message.signature` with `signer`'s key id and signature (in place).

    The message is being rewritten anyway, so its signature field is cleared in place
    rather than serialising a copy: this runs once per step on the step path.
    """
    message.ClearField("signature")
    data = _prefix(domain, signer.key_id) + message.SerializeToString(deterministic=True)
    block = message.signature
    block.key_id = signer.key_id
    block.signature = signer.sign(data)


def verify_message(domain: bytes, message: SignedLeyline, keyring: Keyring) -> Role:
    """The signer's role; RejectedMessage (missing_signature, unknown_key,
    invalid_signature, unauthorised_signer) unless the message's own signature
    verifies under a key of `keyring` whose role may sign this kind of message."""
    if not message.HasField("signature"):
        raise RejectedMessage("missing_signature")
    block = message.signature
    keyring.role_of(block.key_id)  # an unknown key is refused before the bytes are built
    signed = signed_bytes(domain, message, block.key_id)
    role = keyring.verify(block.key_id, signed, block.signature)
    if not role.may_sign(domain):
        raise RejectedMessage("unauthorised_signer", f"role {role.name} may not sign {domain!r}")
    return role
