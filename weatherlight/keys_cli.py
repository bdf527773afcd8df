"""The `tamiyo-bus keys` command: generate a role's key pair, print key ids, and check
that the keys a component would start with are configured and usable, with the role
each trusted key signs as."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from leyline_vocab.roles import ROLES
from oona.keyfiles import KeyConfigError, generate_key_pair, key_id_of_file
from weatherlight.settings import SystemSettings

EXIT_CONFIG_ERROR = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys` and its subcommands to the CLI."""
    keys = commands.add_parser("keys", help="generate and inspect Ed25519 signing keys")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    gen = sub.add_parser(
        "generate", help="write a new key pair for a role (ROLE[.LABEL].key 0600, .pub.pem)"
    )
    gen.add_argument("--role", required=True, choices=sorted(ROLES), help="what the key signs")
    gen.add_argument("--label", help="tells a rotation's keys apart: ROLE.LABEL.key (e.g. a date)")
    gen.add_argument("--out", type=Path, required=True, help="directory of the private key")
    gen.add_argument(
        "--public-out", type=Path, help="directory of the public key (a trust directory)"
    )
    gen.set_defaults(run=run_generate)

    ident = sub.add_parser("id", help="print the key id of private or public key files")
    ident.add_argument("files", nargs="+", type=Path)
    ident.set_defaults(run=run_id)

    check = sub.add_parser(
        "check", help="load the keys configured in the environment, as a component would"
    )
    check.add_argument(
        "--only", choices=("signing", "trust"), help="check only the signing key or the trust"
    )
    check.set_defaults(run=run_check)


def run_generate(args: argparse.Namespace) -> int:
    name = f"{args.role}.{args.label}" if args.label else args.role
    try:
        pair = generate_key_pair(args.out, name, public_directory=args.public_out)
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"keys generate: {exc}", file=sys.stderr)
        return 1
    print(f"private key: {pair.private_path} (mode 0600; keep it out of the repository)")
    print(f"public key:  {pair.public_path}")
    print(f"key id:      {pair.key_id} (role {args.role})")
    return 0


def run_id(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            print(f"{key_id_of_file(path)}  {path}")
        except KeyConfigError as exc:
            print(f"keys id: {exc}", file=sys.stderr)
            status = EXIT_CONFIG_ERROR
    return status


def run_check(args: argparse.Namespace) -> int:
    settings = SystemSettings.from_env().keys
    status = 0
    if args.only in (None, "signing"):
        try:
            print(f"signing key: {settings.load_signer().key_id}")
        except KeyConfigError as exc:
            print(f"keys check: {exc}", file=sys.stderr)
            status = EXIT_CONFIG_ERROR
    if args.only in (None, "trust"):
        try:
            roles = settings.load_keyring(ROLES).roles()
            trusted = ", ".join(f"{key_id} ({role})" for key_id, role in sorted(roles.items()))
            print(f"trusted keys: {trusted}")
        except KeyConfigError as exc:
            print(f"keys check: {exc}", file=sys.stderr)
            status = EXIT_CONFIG_ERROR
    return status
