"""`tamiyo-bus serve`: Weatherlight running the async services until SIGTERM or SIGINT.

Keys come from the environment (oona.keyfiles: TAMIYO_SIGNING_KEY_FILE and the trusted
keys; Simic's learner signs with Simic's key, TAMIYO_SIMIC_SIGNING_KEY_FILE, unless
TAMIYO_LEARNER=off); a missing key is a start-up error naming the setting.
`--ephemeral-keys` makes throw-away key pairs instead, for local trials only: nothing
outside this process can sign messages it accepts. There is no unsigned mode. Without
TAMIYO_REDIS_URL the embedded server is started (data under TAMIYO_DATA_DIR, append-only
persistence unless TAMIYO_REDIS_APPENDONLY turns it off) and the ``server`` service
restarts it whenever it dies.

`python -m weatherlight.serve [options]` runs the same command without
loading the rest of the CLI (the trainer's and the policy's modules, torch), which
starts it several seconds faster.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from consumers.nissa.rules import load_rules
from leyline_vocab.roles import ROLES, WEATHERLIGHT
from oona.keyfiles import KeyConfigError, KeySettings, load_private_key_file
from oona.keys import Keyring, Signer
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from weatherlight.learner import ENV_SIMIC_SIGNING_KEY_FILE, LEARNER
from weatherlight.server_keeper import SERVER, server_keeper_service
from weatherlight.services import (
    Weatherlight,
    WeatherlightSettings,
    default_services,
)
from weatherlight.settings import ENV_LEARNER, SystemSettings
from weatherlight.supervisor import ServiceSpec

log = logging.getLogger(__name__)
EXIT_CONFIG_ERROR = 2


def load_keys(keys: KeySettings, ephemeral: bool) -> tuple[Signer, Keyring]:
    """The signing key and the trusted keys (each as the role its file name gives it);
    Weatherlight also trusts its own key as ``weatherlight``, since Nissa verifies what
    the hub (in the same process) signed."""
    if ephemeral:
        signer = Signer.generate()
        log.warning("ephemeral keys (%s): only this process can sign accepted messages",
                    signer.key_id)  # fmt: skip
        return signer, Keyring.of(signer.public_key(), role=WEATHERLIGHT)
    signer = keys.load_signer()
    return signer, keys.load_keyring(ROLES).with_key(signer.public_key(), WEATHERLIGHT)


def load_simic_signer(settings: WeatherlightSettings, ephemeral: bool) -> Signer | None:
    """Simic's key for the learner (None when the learner is off): a throw-away one
    with ``--ephemeral-keys``, else the file TAMIYO_SIMIC_SIGNING_KEY_FILE names."""
    if settings.learner is None:
        return None
    if ephemeral:
        return Signer.generate()
    path = settings.learner.signing_key_file
    if path is None:
        raise KeyConfigError(
            ENV_SIMIC_SIGNING_KEY_FILE,
            "Simic's learner signs policies with Simic's key: name its file "
            f"(`tamiyo-bus keys generate --role simic`), or set {ENV_LEARNER}=off",
        )
    return load_private_key_file(path, setting=ENV_SIMIC_SIGNING_KEY_FILE)


def build_settings(args: argparse.Namespace, system: SystemSettings) -> WeatherlightSettings:
    """The tree's Weatherlight branch with the command's flags applied."""
    base = system.weatherlight
    state = base.nissa.state
    if args.rules is not None:
        state = replace(state, rules=load_rules(args.rules))
    nissa = replace(base.nissa, host=args.host, port=args.port, state=state)
    return replace(base, nissa=nissa)


def embedded_server(oona: OonaSettings) -> EmbeddedServer:
    """The deployment's embedded server, started from this (the main) thread."""
    return EmbeddedServer(
        data_dir=oona.data_dir / "redis",
        appendonly=oona.appendonly,
        appendfsync=oona.appendfsync,
    ).start()


async def serve(
    args: argparse.Namespace,
    system: SystemSettings,
    signer: Signer,
    keyring: Keyring,
    simic_signer: Signer | None = None,
) -> int:
    settings = build_settings(args, system)
    specs = default_services(settings, simic_signer=simic_signer)
    if args.services:
        wanted = {name.strip() for name in args.services.split(",") if name.strip()}
        unknown = wanted - {spec.name for spec in specs}
        if unknown:
            print(f"serve: unknown services {sorted(unknown)}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
        specs = [spec for spec in specs if spec.name in wanted]
    oona = system.oona
    server = None if oona.redis_url else embedded_server(oona)
    if server is not None:
        oona = replace(oona, redis_url=server.url)
        keeper = server_keeper_service(server, settings.server_keeper)
        specs = [*specs, ServiceSpec(SERVER, keeper)]
    try:
        return await _supervise(args, specs, oona, settings, signer, keyring)
    finally:
        if server is not None:
            server.stop()


async def _supervise(
    args: argparse.Namespace,
    specs: Sequence[ServiceSpec],
    oona: OonaSettings,
    settings: WeatherlightSettings,
    signer: Signer,
    keyring: Keyring,
) -> int:
    weatherlight = Weatherlight(
        specs,
        oona=oona,
        signer=signer,
        keyring=keyring,
        instance=args.instance,
        settings=settings.supervisor,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, weatherlight.stop_event.set)
    await weatherlight.start()
    names = ", ".join(spec.name for spec in specs)
    print(f"weatherlight: running {names} (key {signer.key_id})", flush=True)
    if weatherlight.status_url:
        print(f"nissa: status page {weatherlight.status_url}/  metrics "
              f"{weatherlight.status_url}/metrics", flush=True)  # fmt: skip
    await weatherlight.stop_event.wait()
    print("weatherlight: stopping (finishing in-flight work)", flush=True)
    await weatherlight.stop()
    print("weatherlight: stopped", flush=True)
    return 0


def without_unwanted_learner(system: SystemSettings, services: str | None) -> SystemSettings:
    """``system`` with the learner off when ``--services`` names a subset without it (so
    that such a subset needs no key of Simic's)."""
    if not services or LEARNER in {name.strip() for name in services.split(",")}:
        return system
    return replace(system, weatherlight=replace(system.weatherlight, learner=None))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    system = without_unwanted_learner(SystemSettings.from_env(), args.services)
    try:
        signer, keyring = load_keys(system.keys, args.ephemeral_keys)
        simic_signer = load_simic_signer(system.weatherlight, args.ephemeral_keys)
    except KeyConfigError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return asyncio.run(serve(args, system, signer, keyring, simic_signer))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="Weatherlight: run the stream drain, the telemetry hub, Nissa, Simic's "
        "field-report intake and Simic's learner, supervised",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Nissa's HTTP address")
    parser.add_argument("--port", type=int, default=9108, help="Nissa's HTTP port (0: any)")
    parser.add_argument("--services", help="comma-separated subset of the services to run")
    parser.add_argument(
        "--instance",
        default=socket.gethostname(),
        help="instance name; consumer names derive from it, keep it stable across restarts",
    )
    parser.add_argument("--rules", type=Path, help="alert rules (JSON list) instead of defaults")
    parser.add_argument(
        "--ephemeral-keys",
        action="store_true",
        help="throw-away key pair for a local trial (other processes cannot sign for it)",
    )
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weatherlight.serve")
    commands = parser.add_subparsers(dest="command")
    register(commands)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
