"""Keys from files and the environment, the `keys` command, and start-up refusals:
with no usable key a component does not start, and the error names the setting."""

from __future__ import annotations

import argparse
import base64
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from leyline_vocab.roles import ROLES
from oona.bus import Bus
from oona.keyfiles import (
    ENV_SIGNING_KEY,
    ENV_SIGNING_KEY_FILE,
    ENV_TRUSTED_KEY_FILES,
    ENV_TRUSTED_KEYS,
    ENV_TRUSTED_KEYS_DIR,
    KeyConfigError,
    KeySettings,
    generate_key_pair,
    key_id_of_file,
)
from oona.keys import key_id_for
from oona.streams import Stream
from tamiyo_bus.security.policy_update import PolicyUpdateListener
from weatherlight import keys_cli as keytool

from .helpers import make_holder


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_generated_pair_loads_from_files_with_private_key_mode_0600(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "keys", "tamiyo")

    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    signer = KeySettings(signing_key_file=pair.private_path).load_signer()
    keyring = KeySettings(trusted_keys_dir=pair.private_path.parent).load_keyring(ROLES)
    assert signer.key_id == pair.key_id
    assert keyring.key_ids == {pair.key_id}
    keyring.verify(pair.key_id, b"data", signer.sign(b"data"))
    assert key_id_of_file(pair.private_path) == key_id_of_file(pair.public_path) == pair.key_id
    with pytest.raises(FileExistsError):
        generate_key_pair(tmp_path / "keys", "tamiyo")


@pytest.mark.parametrize("encoding", ["binary", "hex", "base64"])
def test_raw_keys_load_in_every_encoding(tmp_path: Path, encoding: str) -> None:
    key = Ed25519PrivateKey.generate()
    encode: Callable[[bytes], bytes] = {
        "binary": lambda b: b,
        "hex": lambda b: b.hex().encode() + b"\n",
        "base64": lambda b: base64.b64encode(b) + b"\n",
    }[encoding]
    (tmp_path / "kasmina.key").write_bytes(encode(_raw_private(key)))
    (tmp_path / "kasmina.pub").write_bytes(encode(_raw_public(key)))

    signer = KeySettings(signing_key_file=tmp_path / "kasmina.key").load_signer()
    keyring = KeySettings(trusted_key_files=(tmp_path / "kasmina.pub",)).load_keyring(ROLES)

    assert signer.key_id == key_id_for(key.public_key())
    assert keyring.key_ids == {signer.key_id}


def test_environment_settings_load_inline_keys_and_union_of_trust_sources(
    tmp_path: Path,
) -> None:
    active, older, third = (Ed25519PrivateKey.generate() for _ in range(3))
    pem = active.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    generate_key_pair(tmp_path / "trust", "tolaria")
    (tmp_path / "trust" / "notes.txt").write_text("not a key, ignored")
    (tmp_path / "tamiyo.older.pub").write_bytes(_raw_public(older).hex().encode())
    env = {
        ENV_SIGNING_KEY: pem,
        ENV_TRUSTED_KEYS_DIR: str(tmp_path / "trust"),
        ENV_TRUSTED_KEY_FILES: str(tmp_path / "tamiyo.older.pub"),
        ENV_TRUSTED_KEYS: "simic=" + base64.b64encode(_raw_public(third)).decode(),
    }

    settings = KeySettings.from_env(env)

    assert settings.load_signer().key_id == key_id_for(active.public_key())
    assert sorted(settings.load_keyring(ROLES).roles().values()) == ["simic", "tamiyo", "tolaria"]
    assert pem not in repr(settings)


def test_missing_signing_key_is_a_start_up_error_naming_the_setting() -> None:
    with pytest.raises(KeyConfigError) as error:
        KeySettings.from_env({}).load_signer()
    assert error.value.setting == ENV_SIGNING_KEY_FILE
    assert ENV_SIGNING_KEY_FILE in str(error.value) and "no unsigned mode" in str(error.value)


def test_missing_trust_is_a_start_up_error_naming_the_setting() -> None:
    with pytest.raises(KeyConfigError) as error:
        KeySettings.from_env({ENV_TRUSTED_KEYS_DIR: "  "}).load_keyring(ROLES)
    assert error.value.setting == ENV_TRUSTED_KEYS_DIR
    assert ENV_TRUSTED_KEYS_DIR in str(error.value)


def test_unreadable_or_invalid_keys_name_the_setting_and_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key at all")
    private_as_trust = tmp_path / "trust"
    pair = generate_key_pair(tmp_path / "pair")
    private_as_trust.mkdir()
    (tmp_path / "empty").mkdir()
    (private_as_trust / "tamiyo.wrong.pub.pem").write_bytes(pair.private_path.read_bytes())
    cases = [
        (KeySettings(signing_key_file=tmp_path / "absent.key"), "signer", "cannot read"),
        (KeySettings(signing_key_file=tmp_path), "signer", "cannot read"),
        (KeySettings(signing_key_file=garbage), "signer", "not an Ed25519 private key"),
        (KeySettings(signing_key="zz"), "signer", "not an Ed25519 private key"),
        (
            KeySettings(signing_key_file=pair.private_path, signing_key="x"),
            "signer",
            "not both",
        ),
        (KeySettings(trusted_keys_dir=tmp_path / "absent"), "keyring", "not a readable"),
        (KeySettings(trusted_keys_dir=tmp_path / "empty"), "keyring", "no public key"),
        (KeySettings(trusted_keys_dir=private_as_trust), "keyring", "holds a private key"),
        (KeySettings(trusted_key_files=(garbage,)), "keyring", "not an Ed25519 public key"),
    ]
    for settings, what, problem in cases:
        with pytest.raises(KeyConfigError) as error:
            settings.load_signer() if what == "signer" else settings.load_keyring(ROLES)
        assert error.value.setting.startswith("TAMIYO_"), error.value
        assert problem in str(error.value)


async def test_policy_listener_with_no_key_configured_refuses_to_start(bus: Bus) -> None:
    with pytest.raises(KeyConfigError, match=ENV_TRUSTED_KEYS_DIR):
        PolicyUpdateListener.from_key_settings(bus, make_holder(), KeySettings.from_env({}))
    assert await bus.redis.exists(bus.key(Stream.POLICY)) == 0  # nothing touched the bus


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tamiyo-bus")
    keytool.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


def test_keys_command_generates_prints_ids_and_checks_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _cli(["keys", "generate", "--out", str(tmp_path), "--role", "simic"]) == 0
    printed = capsys.readouterr().out
    key_id = key_id_of_file(tmp_path / "simic.key")
    assert str(tmp_path / "simic.key") in printed and key_id in printed
    assert _cli(["keys", "generate", "--out", str(tmp_path), "--role", "simic"]) == 1

    assert _cli(["keys", "id", str(tmp_path / "simic.pub.pem")]) == 0
    assert capsys.readouterr().out.startswith(key_id)

    for name in (ENV_SIGNING_KEY_FILE, ENV_SIGNING_KEY, ENV_TRUSTED_KEYS_DIR,
                 ENV_TRUSTED_KEY_FILES, ENV_TRUSTED_KEYS):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert _cli(["keys", "check"]) == keytool.EXIT_CONFIG_ERROR
    errors = capsys.readouterr().err
    assert ENV_SIGNING_KEY_FILE in errors and ENV_TRUSTED_KEYS_DIR in errors

    monkeypatch.setenv(ENV_SIGNING_KEY_FILE, str(tmp_path / "simic.key"))
    monkeypatch.setenv(ENV_TRUSTED_KEYS_DIR, str(tmp_path))
    assert _cli(["keys", "check"]) == 0
    assert capsys.readouterr().out.count(key_id) == 2
