"""Attack class 3 of issue 17: a low-value key (a telemetry producer's) may sign only
what its role allows. Trust is per role, not the union of every key: it cannot publish
a policy, sign a command, forge a field report or speak as another source, and a report
id is bound to its signer so a squatter cannot shadow a genuine report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from consumers.hub.service import HubSettings, TelemetryHub
from consumers.simic import ReportStore, SimicIntake
from leyline_pb import leyline_pb2 as pb
from leyline_vocab.roles import KASMINA, ROLES, SIMIC, TAMIYO, TOLARIA
from oona.bus import Bus
from oona.connection import open_redis
from oona.errors import RejectedMessage
from oona.keyfiles import KeyConfigError, KeySettings, generate_key_pair
from oona.keys import Keyring, Role, Signer
from oona.settings import OonaSettings
from oona.streams import Stream
from producers.telemetry import TelemetryProducer
from tamiyo_bus.security.commands import CommandSigner, CommandVerifier, stamp_command
from tamiyo_bus.security.policy_update import (
    PolicyUpdateListener,
    PolicyUpdateTransaction,
    build_policy_update,
    publish_policy_update,
)
from tests.telemetry.helpers import read_aggregates
from weatherlight import keys_cli as keytool
from weatherlight.role_keys import RoleKeys

from .helpers import ARCHITECTURE, REGISTRY, make_holder, seed_command, small_policy

ROOT = Path(__file__).resolve().parents[2]
KEYS = {name: Signer.generate() for name in ("tamiyo", "tamiyo-2", "tolaria", "kasmina", "simic")}
AS_ROLE = {"tamiyo": TAMIYO, "tamiyo-2": TAMIYO, "tolaria": TOLARIA, "kasmina": KASMINA}
AS_ROLE["simic"] = SIMIC


def _deployment_keyring() -> Keyring:
    """What every verifier of the deployment trusts: each key as its own role."""
    return Keyring({key.key_id: (key.public_key(), AS_ROLE[n]) for n, key in KEYS.items()})


def _bus(settings: OonaSettings, name: str, source: str | None = None) -> Bus:
    redis = open_redis(settings.redis_url, settings)
    return Bus(redis, settings, KEYS[name], source=source or name.split("-")[0])


def _update(signer: Signer, version: int) -> pb.PolicyUpdate:
    return build_policy_update(
        small_policy(1).state_dict(), policy_id="policy-a", version=version,
        architecture_id=ARCHITECTURE, registry_digest=REGISTRY, signer=signer,
    )  # fmt: skip


async def test_a_telemetry_key_cannot_publish_a_policy_update(settings: OonaSettings) -> None:
    keyring = _deployment_keyring()
    holder = make_holder(version=1)
    transaction = PolicyUpdateTransaction(holder, keyring)
    listener = PolicyUpdateListener(_bus(settings, "simic"), transaction, keyring)
    tolaria = _bus(settings, "tolaria", source="simic")
    await publish_policy_update(tolaria, _update(KEYS["tolaria"], version=2))
    simic = _bus(settings, "simic")
    await publish_policy_update(simic, _update(KEYS["tolaria"], version=3))  # inner key

    await listener.consumer.drain()

    assert holder.current().version == 1
    metrics = listener.bus.metrics
    assert metrics.count("rejected", stream=Stream.POLICY, reason="unauthorised_signer") == 2
    for bus in (listener.bus, tolaria, simic):
        await bus.close()


def test_a_telemetry_key_cannot_sign_a_command() -> None:
    verifier = CommandVerifier(_deployment_keyring())
    forged = seed_command()
    stamp_command(forged, "tamiyo")
    CommandSigner(KEYS["kasmina"]).sign(forged)
    genuine = seed_command()
    stamp_command(genuine, "tamiyo")
    CommandSigner(KEYS["tamiyo"]).sign(genuine)

    with pytest.raises(RejectedMessage, match="unauthorised_signer"):
        verifier.verify(forged)
    verifier.verify(genuine)


async def test_a_telemetry_key_cannot_forge_a_field_report(
    settings: OonaSettings, tmp_path: Path
) -> None:
    store = ReportStore(tmp_path / "simic.sqlite3")
    intake = SimicIntake(_bus(settings, "simic"), _deployment_keyring(), store)
    report = pb.FieldReport(report_id="r-1", command_id="c-1", training_run_id="run")
    forger = _bus(settings, "tolaria", source="tamiyo")
    await forger.publish(
        pb.MESSAGE_TYPE_FIELD_REPORT, report.SerializeToString(), stream=Stream.FIELD_REPORTS
    )

    await intake.drain()

    assert store.count() == 0
    assert (
        intake.metrics.count("rejected", stream=Stream.FIELD_REPORTS, reason="unauthorised_signer")
        == 1
    )
    store.close()
    await forger.close()
    await intake.bus.close()


async def test_a_report_id_is_bound_to_its_signer_so_a_squatter_cannot_shadow_it(
    settings: OonaSettings, tmp_path: Path
) -> None:
    store = ReportStore(tmp_path / "simic.sqlite3")
    intake = SimicIntake(_bus(settings, "simic"), _deployment_keyring(), store)
    squatter, genuine = _bus(settings, "tamiyo-2"), _bus(settings, "tamiyo")
    forged = pb.FieldReport(report_id="r-1", command_id="c-1", training_run_id="forged")
    real = pb.FieldReport(report_id="r-1", command_id="c-1", training_run_id="run-1")
    for bus, report in ((squatter, forged), (genuine, real)):  # the squatter is first
        await bus.publish(
            pb.MESSAGE_TYPE_FIELD_REPORT, report.SerializeToString(), stream=Stream.FIELD_REPORTS
        )

    await intake.drain()

    stored = store.get("r-1", signer_key_id=KEYS["tamiyo"].key_id)
    assert stored is not None and stored.report.training_run_id == "run-1"
    squatted = store.get("r-1", signer_key_id=KEYS["tamiyo-2"].key_id)
    assert squatted is not None and squatted.report.training_run_id == "forged"
    store.close()
    for bus in (squatter, genuine, intake.bus):
        await bus.close()


async def test_a_producer_cannot_publish_telemetry_as_another_source(
    settings: OonaSettings,
) -> None:
    """Urgent packets, one entry each on the emergency stream: a packet claiming
    another source (the hub would normalise "Tamiyo" to tamiyo), an envelope claiming
    another source, and the producer's own."""
    kasmina = _bus(settings, "kasmina")
    claims_tamiyo = _bus(settings, "kasmina", source="tamiyo")
    urgent = pb.MESSAGE_PRIORITY_HIGH
    for bus, source in ((kasmina, "Tamiyo"), (claims_tamiyo, "kasmina"), (kasmina, "kasmina")):
        await TelemetryProducer(bus, source=source).send(
            pb.TelemetryPacket(source=source, priority=urgent)
        )
    hub = TelemetryHub(_bus(settings, "tolaria"), _deployment_keyring(), HubSettings())

    await hub.drain()
    await hub.flush()

    [aggregate] = await read_aggregates(hub.bus)
    assert [s.source for s in aggregate.sources] == ["kasmina"]
    metrics = hub.bus.metrics
    assert metrics.count("rejected") == 2
    assert metrics.count("rejected", stream=Stream.EMERGENCY, reason="unauthorised_signer") == 2
    for bus in (kasmina, claims_tamiyo, hub.bus):
        await bus.close()


def test_key_files_name_their_role_and_an_unknown_role_refuses_to_start(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    tamiyo = generate_key_pair(tmp_path / "private", "tamiyo", public_directory=trust)
    simic = generate_key_pair(tmp_path / "private", "simic.2025-07", public_directory=trust)
    tolaria = Signer.generate()
    inline = tolaria.public_key().public_bytes_raw().hex()

    keyring = KeySettings(trusted_keys_dir=trust, trusted_keys=(f"tolaria={inline}",)).load_keyring(
        ROLES
    )

    assert keyring.roles() == {
        tamiyo.key_id: "tamiyo", simic.key_id: "simic", tolaria.key_id: "tolaria",
    }  # fmt: skip
    assert not list(trust.glob("*.key"))  # the trust directory holds no private key
    generate_key_pair(tmp_path / "private", "signing", public_directory=trust)
    with pytest.raises(KeyConfigError, match=r"signing\.pub\.pem"):
        KeySettings(trusted_keys_dir=trust).load_keyring(ROLES)
    with pytest.raises(KeyConfigError, match="ROLE=KEY"):
        KeySettings(trusted_keys=(inline,)).load_keyring(ROLES)


def test_the_keys_command_issues_a_role_key_and_shows_the_roles_it_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    private, trust = tmp_path / "private", tmp_path / "trust"
    for role in ("tamiyo", "simic"):
        assert keytool_main(["generate", "--out", str(private), "--public-out", str(trust),
                             "--role", role]) == 0  # fmt: skip
    assert keytool_main(["generate", "--out", str(private), "--role", "nobody"]) != 0
    monkeypatch.setenv("TAMIYO_SIGNING_KEY_FILE", str(private / "tamiyo.key"))
    monkeypatch.setenv("TAMIYO_TRUSTED_KEYS_DIR", str(trust))
    capsys.readouterr()

    assert keytool_main(["check"]) == 0

    printed = capsys.readouterr().out
    assert "(tamiyo)" in printed and "(simic)" in printed


def keytool_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    keytool.register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["keys", *argv])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    result: int = args.run(args)
    return result


def test_roles_grant_only_what_each_component_signs() -> None:
    assert TOLARIA.may_publish(Stream.TELEMETRY, pb.MESSAGE_TYPE_TELEMETRY)
    assert not TOLARIA.may_publish(Stream.POLICY, pb.MESSAGE_TYPE_POLICY_UPDATE)
    assert not TOLARIA.may_claim("tamiyo") and TOLARIA.may_claim("tolaria")
    assert SIMIC.may_publish(Stream.POLICY, pb.MESSAGE_TYPE_POLICY_UPDATE)
    assert not Role("nobody").may_claim("")


def test_the_compose_stack_mounts_only_the_keys_of_weatherlight_and_simics_learner() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["weatherlight"]
    private = [v for v in service["volumes"] if ".key:" in v]
    assert private == [
        "./ops/keys/private/weatherlight.key:/keys/weatherlight.key:ro",
        "./ops/keys/private/simic.key:/keys/simic.key:ro",  # the learner signs policies
    ]
    assert "./ops/keys/trusted:/keys/trusted:ro" in service["volumes"]
    assert service["environment"]["TAMIYO_TRUSTED_KEYS_DIR"] == "/keys/trusted"


def test_the_demo_signs_with_one_key_per_role() -> None:
    keys = RoleKeys.generate()
    assert sorted(keys.keyring.roles().values()) == sorted(ROLES)
    assert {name: keys.keyring.roles()[s.key_id] for name, s in keys.signers.items()} == {
        name: name for name in ROLES
    }
