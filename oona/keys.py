"""Ed25519 signing keys and the keyring that verifies them.

One module for every party: Oona signs envelopes, Tamiyo signs commands, Kasmina and
the consumers verify. There is no unsigned mode: a component that has no key cannot
be constructed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oona.errors import RejectedMessage


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A stable short id derived from the public key, so ids cannot collide by accident."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """The active private key and its id."""

    private_key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> Signer:
        return cls(private_key, key_id_for(private_key.public_key()))

    @classmethod
    def generate(cls) -> Signer:
        """A throw-away key (demo and tests); production keys come from files or env."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


class Keyring:
    """Public keys by id; several at once so keys rotate without downtime."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one public key")
        self._keys = dict(keys)

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey) -> Keyring:
        return cls({key_id_for(k): k for k in public_keys})

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def with_key(self, public_key: Ed25519PublicKey) -> Keyring:
        """A keyring that also trusts `public_key` (the start of a rotation overlap)."""
        return Keyring({**self._keys, key_id_for(public_key): public_key})

    def without_key(self, key_id: str) -> Keyring:
        """A keyring that no longer trusts `key_id` (the end of a rotation overlap)."""
        return Keyring({k: v for k, v in self._keys.items() if k != key_id})

    def verify(self, key_id: str, data: bytes, signature: bytes) -> None:
        """Raise RejectedMessage unless `signature` over `data` verifies under `key_id`."""
        if not signature:
            raise RejectedMessage("missing_signature")
        public_key = self._keys.get(key_id)
        if public_key is None:
            raise RejectedMessage("unknown_key", key_id or "<empty key id>")
        try:
            public_key.verify(signature, data)
        except InvalidSignature:
            raise RejectedMessage("invalid_signature", key_id) from None
