"""Throw-away keys, one per signing role, for one run (the demo): each component signs
with its own role's key and every verifier trusts each key only as its role, as a
deployment configured from key files does.

A run writes its keys into its own directory (`create`: private keys mode 0600 under
``private/``, public keys under ``trusted/``) so that the run can be drained after a
crash by the same signers (`load`): Simic keeps reports apart by signer, and a report
signed again under a new key would be stored a second time. A trainer of a deployment
loads only its own roles' private keys from the deployment's key directory
(`load_signing`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from leyline_vocab.roles import ROLES
from oona.keyfiles import (
    ENV_SIGNING_KEY_FILE,
    KeyConfigError,
    KeySettings,
    generate_key_pair,
    load_private_key_file,
)
from oona.keys import Keyring, Role, Signer

PRIVATE = "private"
TRUSTED = "trusted"


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

    @classmethod
    def create(cls, directory: Path, roles: Mapping[str, Role] = ROLES) -> RoleKeys:
        """New keys for every role, written under `directory` (which must not hold any)."""
        for name in roles:
            generate_key_pair(directory / PRIVATE, name, public_directory=directory / TRUSTED)
        return cls.load(directory, roles)

    @classmethod
    def load(cls, directory: Path, roles: Mapping[str, Role] = ROLES) -> RoleKeys:
        """The keys `create` wrote under `directory`."""
        signers = {
            name: load_private_key_file(directory / PRIVATE / f"{name}.key") for name in roles
        }
        keyring = KeySettings(trusted_keys_dir=directory / TRUSTED).load_keyring(roles)
        return cls(signers, keyring)

    @classmethod
    def load_signing(
        cls, directory: Path, signing: Sequence[str], roles: Mapping[str, Role] = ROLES
    ) -> RoleKeys:
        """The private keys of the ``signing`` roles only (a component holds its own
        keys and no others), trusting every public key under ``directory`` as its role."""
        signers = {
            name: load_private_key_file(directory / PRIVATE / f"{name}.key") for name in signing
        }
        keyring = KeySettings(trusted_keys_dir=directory / TRUSTED).load_keyring(roles)
        return cls(signers, keyring)

    def signer(self, role: str) -> Signer:
        return self.signers[role]


def load_own_keys(keys: KeySettings, role: Role) -> tuple[Signer, Keyring]:
    """A command's signing key and the trust list, refused (naming the setting) when
    the trust list gives the key another role than the one the command signs as."""
    signer = keys.load_signer()
    keyring = keys.load_keyring(ROLES)
    if signer.key_id in keyring.key_ids and keyring.role_of(signer.key_id) != role:
        other = keyring.role_of(signer.key_id).name
        raise KeyConfigError(
            ENV_SIGNING_KEY_FILE, f"this command signs as {role.name}, this key is {other}'s"
        )
    return signer, keyring
