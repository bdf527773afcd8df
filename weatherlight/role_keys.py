"""Throw-away keys, one per signing role, for a run whose keys never leave its process
(the demo): each component signs with its own role's key and every verifier trusts
each key only as its role, as a deployment configured from key files does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from leyline_vocab.roles import ROLES
from oona.keys import Keyring, Role, Signer


@dataclass(frozen=True)
class RoleKeys:
    """A signer per role name and the keyring trusting each as its role."""

    signers: Mapping[str, Signer]
    keyring: Keyring

    @classmethod
    def generate(cls, roles: Mapping[str, Role] = ROLES) -> RoleKeys:
        signers = {name: Signer.generate() for name in roles}
        trusted = {s.key_id: (s.public_key(), roles[name]) for name, s in signers.items()}
        return cls(signers, Keyring(trusted))

    def signer(self, role: str) -> Signer:
        return self.signers[role]
