"""`tamiyo-bus learner` signs as Simic: a key the trust list gives another role is
refused at start-up, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from leyline_vocab.roles import SIMIC
from oona.keyfiles import ENV_SIGNING_KEY_FILE, KeyConfigError, KeySettings, generate_key_pair
from weatherlight.role_keys import load_own_keys
from weatherlight.settings import SystemSettings


def _system(tmp_path: Path, role: str) -> SystemSettings:
    generate_key_pair(tmp_path / "private", role, public_directory=tmp_path / "trusted")
    keys = KeySettings(signing_key_file=tmp_path / "private" / f"{role}.key",
                       trusted_keys_dir=tmp_path / "trusted")  # fmt: skip
    return SystemSettings(keys=keys)


def test_the_learner_refuses_a_key_of_another_role(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match=ENV_SIGNING_KEY_FILE):
        load_own_keys(_system(tmp_path, "tolaria").keys, SIMIC)


def test_the_learner_signs_with_simics_key(tmp_path: Path) -> None:
    signer, keyring = load_own_keys(_system(tmp_path, "simic").keys, SIMIC)
    assert keyring.role_of(signer.key_id).name == "simic"
