"""The `tamiyo-bus keys` command: generate a key pair, print key ids, and check that
the keys a component would start with are configured and usable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oona.keyfiles import KeyConfigError, generate_key_pair, key_id_of_file
from weatherlight.settings import SystemSettings

EXIT_CONFIG_ERROR = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys` and its subcommands to the CLI."""
    keys = commands.add_parser("keys", help="generate and inspect Ed25519 signing keys")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    gen = sub.add_parser("generate", help="write a new key pair (NAME.key 0600, NAME.pub.pem)")
    gen.add_argument("--out", type=Path, required=True, help="directory to write the pair to")
    gen.add_argument("--name", default="signing", help="file name stem (default: signing)")
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
    try:
        pair = generate_key_pair(args.out, args.name)
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"keys generate: {exc}", file=sys.stderr)
        return 1
    print(f"private key: {pair.private_path} (mode 0600; keep it out of the repository)")
    print(f"public key:  {pair.public_path}")
    print(f"key id:      {pair.key_id}")
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
            keyring = settings.load_keyring()
            print(f"trusted keys: {', '.join(sorted(keyring.key_ids))}")
        except KeyConfigError as exc:
            print(f"keys check: {exc}", file=sys.stderr)
            status = EXIT_CONFIG_ERROR
    return status
