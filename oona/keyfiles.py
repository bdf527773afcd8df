"""Loading Ed25519 keys from files and the environment, and writing new key pairs.

Keys never live in the repository: a component is pointed at its keys by settings
(environment variables, or the same fields set in code). Every failure to obtain a
key, whether the setting is absent, the file unreadable or the content not an Ed25519
key, raises `KeyConfigError` naming the setting, at start-up. There is no fallback to
an unsigned mode: a component that quietly ran unsigned for want of a secret would
look healthy while anyone on the bus could command it.

Accepted encodings, for private and public keys alike: PEM (PKCS#8 private keys,
SubjectPublicKeyInfo public keys, unencrypted), or the raw 32 key bytes, either as
binary or as text in hex or base64. A raw private key is the Ed25519 seed.

Every trusted key has a role (what it may sign). A public key file says its role in
its name, ``ROLE.pub.pem`` or ``ROLE.LABEL.pub.pem`` (a label tells a rotation's keys
apart); an inline key is written ``ROLE=KEY``. A role the caller does not know is a
configuration error, never a key trusted for everything.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from oona.errors import OonaError
from oona.keys import Keyring, Role, Signer, key_id_for

log = logging.getLogger(__name__)

ENV_SIGNING_KEY_FILE = "TAMIYO_SIGNING_KEY_FILE"
ENV_SIGNING_KEY = "TAMIYO_SIGNING_KEY"
ENV_TRUSTED_KEYS_DIR = "TAMIYO_TRUSTED_KEYS_DIR"
ENV_TRUSTED_KEY_FILES = "TAMIYO_TRUSTED_KEY_FILES"
ENV_TRUSTED_KEYS = "TAMIYO_TRUSTED_KEYS"

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIXES = (".pub.pem", ".pub")
RAW_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 16 * 1024

_GENERATE_HINT = "generate a key pair with `tamiyo-bus keys generate --out DIR`"


class KeyConfigError(OonaError):
    """A key setting is missing or unusable; the component must not start.

    `setting` names the environment variable (or settings field) to fix.
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


# ------------------------------------------------------------------ decoding


def _raw_from_text(data: bytes) -> bytes | None:
    """The 32 raw key bytes if `data` is exactly that in binary, hex or base64."""
    if len(data) == RAW_KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * RAW_KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == RAW_KEY_BYTES else None


def decode_private_key(data: bytes, *, setting: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM or raw bytes; KeyConfigError naming `setting`
    when it is anything else."""
    if b"-----BEGIN" in data:
        try:
            key = load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyConfigError(setting, "encrypted PEM keys are not supported") from None
        except ValueError as exc:
            raise KeyConfigError(setting, f"not a readable PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyConfigError(setting, f"{type(key).__name__} is not an Ed25519 key")
        return key
    raw = _raw_from_text(data)
    if raw is None:
        raise KeyConfigError(
            setting, "not an Ed25519 private key (expected PEM, or 32 raw bytes, hex or base64)"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def decode_public_key(data: bytes, *, setting: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM or raw bytes; KeyConfigError naming `setting`
    when it is anything else (a private key included: trust lists hold public keys)."""
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" in data:
            raise KeyConfigError(setting, "holds a private key; give the public key instead")
        try:
            key = load_pem_public_key(data)
        except ValueError as exc:
            raise KeyConfigError(setting, f"not a readable PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyConfigError(setting, f"{type(key).__name__} is not an Ed25519 key")
        return key
    raw = _raw_from_text(data)
    if raw is None:
        raise KeyConfigError(
            setting, "not an Ed25519 public key (expected PEM, or 32 raw bytes, hex or base64)"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _read_key_file(path: Path, *, setting: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyConfigError(setting, f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyConfigError(
            setting, f"{path} is larger than any key file ({MAX_KEY_FILE_BYTES} B)"
        )
    return data


def load_private_key_file(path: Path, *, setting: str = ENV_SIGNING_KEY_FILE) -> Signer:
    """The signer whose private key is in `path`.

    A key file that group or others may read still loads (container secrets are often
    mounted that way) but is logged as a warning, since anyone who reads it can sign.
    """
    data = _read_key_file(path, setting=setting)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("private key %s is accessible to group or others (mode %o)", path, mode & 0o777)
    return Signer.from_private_key(decode_private_key(data, setting=f"{setting} ({path})"))


def load_public_key_file(path: Path, *, setting: str) -> Ed25519PublicKey:
    """The public key in `path`."""
    return decode_public_key(_read_key_file(path, setting=setting), setting=f"{setting} ({path})")


def _known_role(name: str, roles: Mapping[str, Role], *, setting: str, what: str) -> Role:
    role = roles.get(name)
    if role is None:
        raise KeyConfigError(
            setting, f"{what}: role {name!r} is not one of {', '.join(sorted(roles))}"
        )
    return role


def role_of_file(path: Path, roles: Mapping[str, Role], *, setting: str) -> Role:
    """The role a public key file's name gives it: ``ROLE.pub.pem``, ``ROLE.LABEL.pub``."""
    return _known_role(
        path.name.split(".", 1)[0],
        roles,
        setting=setting,
        what=f"{path.name} (name key files ROLE.pub.pem or ROLE.LABEL.pub.pem)",
    )


def public_key_files(directory: Path, *, setting: str = ENV_TRUSTED_KEYS_DIR) -> list[Path]:
    """The public key files of a trust directory (``*.pub.pem`` and ``*.pub``), sorted.

    Only those names count, so a directory may also hold notes or the matching private
    keys without them being mistaken for trusted keys.
    """
    if not directory.is_dir():
        raise KeyConfigError(setting, f"{directory} is not a readable directory")
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise KeyConfigError(setting, f"cannot list {directory}: {exc.strerror}") from None
    found = [p for p in entries if p.is_file() and p.name.endswith(PUBLIC_SUFFIXES)]
    if not found:
        raise KeyConfigError(
            setting, f"{directory} holds no public key files (*.pub.pem or *.pub); {_GENERATE_HINT}"
        )
    return found


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class KeySettings:
    """Where a component finds its signing key and the public keys it trusts.

    Signing: exactly one of `signing_key_file` (a path) or `signing_key` (the key
    itself, for platforms that inject secrets as environment variables). Trust: every
    public key in `trusted_keys_dir`, `trusted_key_files` and `trusted_keys` (inline
    ``ROLE=KEY``, the key in hex or base64), each as the role its name gives it, so a
    rotation overlap is configured by adding the new key beside the old one.
    """

    signing_key_file: Path | None = None
    signing_key: str | None = field(default=None, repr=False)
    trusted_keys_dir: Path | None = None
    trusted_key_files: tuple[Path, ...] = ()
    trusted_keys: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KeySettings:
        """Settings from TAMIYO_SIGNING_KEY_FILE, TAMIYO_SIGNING_KEY,
        TAMIYO_TRUSTED_KEYS_DIR, TAMIYO_TRUSTED_KEY_FILES (os.pathsep-separated) and
        TAMIYO_TRUSTED_KEYS (comma-separated) in ``environ``; empty values count as unset.
        The settings tree (weatherlight.settings) passes the process environment."""

        def value(name: str) -> str | None:
            raw = environ.get(name, "").strip()
            return raw or None

        key_file = value(ENV_SIGNING_KEY_FILE)
        trust_dir = value(ENV_TRUSTED_KEYS_DIR)
        files = value(ENV_TRUSTED_KEY_FILES) or ""
        inline = value(ENV_TRUSTED_KEYS) or ""
        return cls(
            signing_key_file=Path(key_file) if key_file else None,
            signing_key=value(ENV_SIGNING_KEY),
            trusted_keys_dir=Path(trust_dir) if trust_dir else None,
            trusted_key_files=tuple(Path(p) for p in files.split(os.pathsep) if p.strip()),
            trusted_keys=tuple(k.strip() for k in inline.split(",") if k.strip()),
        )

    def load_signer(self) -> Signer:
        """The component's signing key; KeyConfigError when none or both are set."""
        if self.signing_key_file is not None and self.signing_key is not None:
            raise KeyConfigError(
                f"{ENV_SIGNING_KEY_FILE} / {ENV_SIGNING_KEY}", "set one of them, not both"
            )
        if self.signing_key_file is not None:
            return load_private_key_file(self.signing_key_file)
        if self.signing_key is not None:
            key = decode_private_key(self.signing_key.encode(), setting=ENV_SIGNING_KEY)
            return Signer.from_private_key(key)
        raise KeyConfigError(
            ENV_SIGNING_KEY_FILE,
            f"no signing key configured (or set {ENV_SIGNING_KEY}); {_GENERATE_HINT}. "
            "There is no unsigned mode.",
        )

    def load_keyring(self, roles: Mapping[str, Role]) -> Keyring:
        """The public keys the component trusts, each as the role of `roles` its name
        gives it; KeyConfigError when none is set or a name gives no known role."""
        keys: dict[str, tuple[Ed25519PublicKey, Role]] = {}

        def trust(key: Ed25519PublicKey, role: Role) -> None:
            keys[key_id_for(key)] = (key, role)

        dir_files = public_key_files(self.trusted_keys_dir) if self.trusted_keys_dir else []
        for setting, paths in (
            (ENV_TRUSTED_KEYS_DIR, dir_files),
            (ENV_TRUSTED_KEY_FILES, self.trusted_key_files),
        ):
            for path in paths:
                key = load_public_key_file(path, setting=setting)
                trust(key, role_of_file(path, roles, setting=setting))
        for index, text in enumerate(self.trusted_keys):
            setting = f"{ENV_TRUSTED_KEYS}[{index}]"
            name, separator, key_text = text.partition("=")
            if not separator:
                raise KeyConfigError(setting, "write an inline trusted key as ROLE=KEY")
            role = _known_role(name.strip(), roles, setting=setting, what="inline key")
            trust(decode_public_key(key_text.strip().encode(), setting=setting), role)
        if not keys:
            raise KeyConfigError(
                ENV_TRUSTED_KEYS_DIR,
                f"no trusted public keys configured (or set {ENV_TRUSTED_KEY_FILES} or "
                f"{ENV_TRUSTED_KEYS}); messages cannot be verified and are never accepted "
                "unverified.",
            )
        return Keyring(keys)


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class GeneratedKeyPair:
    """Where `generate_key_pair` wrote a new key pair, and the pair's key id."""

    private_path: Path
    public_path: Path
    key_id: str


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (never briefly readable by others) and
    refuse to overwrite: replacing a key by accident locks out its verifiers."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def generate_key_pair(
    directory: Path, name: str = "signing", *, public_directory: Path | None = None
) -> GeneratedKeyPair:
    """Write a new Ed25519 key pair: ``NAME.key`` (PKCS#8 PEM, mode 0600) in
    `directory` and ``NAME.pub.pem`` (SubjectPublicKeyInfo PEM, mode 0644) in
    `public_directory` (default: the same), so a trust directory never has to hold a
    private key. NAME is ``ROLE`` or ``ROLE.LABEL`` for a key that verifiers trust."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid key name {name!r}")
    public_directory = public_directory or directory
    directory.mkdir(parents=True, exist_ok=True)
    public_directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = public_directory / f"{name}{PUBLIC_SUFFIXES[0]}"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    _write_new(
        private_path,
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        0o600,
    )
    public = key.public_key()
    _write_new(
        public_path, public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), 0o644
    )
    return GeneratedKeyPair(private_path, public_path, key_id_for(public))


def key_id_of_file(path: Path) -> str:
    """The key id of a private or public key file (a pair's two files give the same id).

    PEM says which kind it holds; raw bytes do not, so a raw key counts as private when
    the file is named ``*.key``.
    """
    data = _read_key_file(path, setting=str(path))
    is_private = b"PRIVATE KEY" in data if b"-----BEGIN" in data else path.suffix == ".key"
    if is_private:
        return key_id_for(decode_private_key(data, setting=str(path)).public_key())
    return key_id_for(decode_public_key(data, setting=str(path)))
