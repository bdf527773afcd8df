"""Ed25519 signing keys and the keyring that verifies them.

One module for every party: Oona signs envelopes, Tamiyo signs commands, Kasmina and
the consumers verify. There is no unsigned mode: a component that has no key cannot
be constructed. Every trusted key has a role, and a signature proves only what that
role may sign.
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


@dataclass(frozen=True)
class Role:
    """What the holder of a key may sign: which message types on which streams, which
    source names it may claim (a name, or any ``name.<suffix>``), and which kinds of
    in-message signature (their domain tags).

    Trust is never the union of every key: a telemetry producer's key verifies, but
    only as what its role allows, so it cannot publish a policy or sign a command.
    `unrestricted` grants everything; it is for single-process tests and benchmarks,
    never for a key loaded from a deployment's files.
    """

    name: str
    publishes: frozenset[tuple[str, int]] = frozenset()
    sources: frozenset[str] = frozenset()
    documents: frozenset[bytes] = frozenset()
    unrestricted: bool = False

    def may_publish(self, stream: str, message_type: int) -> bool:
        return self.unrestricted or (stream, message_type) in self.publishes

    def may_claim(self, source: str) -> bool:
        head, dot, _ = source.partition(".")
        return self.unrestricted or source in self.sources or bool(dot and head in self.sources)

    def may_sign(self, domain: bytes) -> bool:
        return self.unrestricted or domain in self.documents


UNRESTRICTED = Role("unrestricted", unrestricted=True)
"""Every grant: for tests, benchmarks and one-process trials whose keys never leave it."""


class Keyring:
    """Public keys by id, each with the role it signs as; several at once so keys
    rotate without downtime."""

    def __init__(self, keys: Mapping[str, tuple[Ed25519PublicKey, Role]]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one public key")
        self._keys = dict(keys)

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey, role: Role) -> Keyring:
        """Trust `public_keys`, each as `role`."""
        return cls({key_id_for(k): (k, role) for k in public_keys})

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def roles(self) -> dict[str, str]:
        """The role name of every trusted key id."""
        return {key_id: role.name for key_id, (_, role) in self._keys.items()}

    def merged(self, other: Keyring) -> Keyring:
        """A keyring that trusts the keys of both (a key in both takes `other`'s role)."""
        return Keyring({**self._keys, **other._keys})

    def with_key(self, public_key: Ed25519PublicKey, role: Role) -> Keyring:
        """A keyring that also trusts `public_key` as `role` (the start of a rotation
        overlap)."""
        return Keyring({**self._keys, key_id_for(public_key): (public_key, role)})

    def without_key(self, key_id: str) -> Keyring:
        """A keyring that no longer trusts `key_id` (the end of a rotation overlap)."""
        return Keyring({k: v for k, v in self._keys.items() if k != key_id})

    def role_of(self, key_id: str) -> Role:
        """The role `key_id` signs as; RejectedMessage('unknown_key') when untrusted.
        Cheap, so a verifier asks it before building the bytes a signature covers."""
        trusted = self._keys.get(key_id)
        if trusted is None:
            raise RejectedMessage("unknown_key", key_id[:80] or "<empty key id>")
        return trusted[1]

    def verify(self, key_id: str, data: bytes, signature: bytes) -> Role:
        """The signer's role; RejectedMessage unless `signature` over `data` verifies
        under `key_id`."""
        if not signature:
            raise RejectedMessage("missing_signature")
        role = self.role_of(key_id)
        public_key = self._keys[key_id][0]
        try:
            public_key.verify(signature, data)
        except InvalidSignature:
            raise RejectedMessage("invalid_signature", key_id) from None
        return role
