"""`tamiyo-bus urza list|add|quarantine`: inspect and edit the blueprint library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tamiyo_bus.urza.blueprint import AdapterKind
from tamiyo_bus.urza.catalogue import DEFAULT_ALLOWED, make_blueprint
from tamiyo_bus.urza.store import UnknownBlueprint, UrzaSettings, UrzaStore
from weatherlight.settings import SystemSettings


def _store(args: argparse.Namespace) -> UrzaStore:
    settings = UrzaSettings(db_path=args.db) if args.db else SystemSettings.from_env().urza
    return UrzaStore.open_seeded(settings)


def _bounds(text: str) -> tuple[str, tuple[float, float]]:
    """``name=low:high`` -> (name, (low, high))."""
    try:
        name, span = text.split("=", 1)
        low, high = span.split(":", 1)
        return name.strip(), (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=LOW:HIGH, got {text!r}") from None


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    print(f"{store.settings.db_path}")
    print(f"{'id':<14} {'tier':>4} {'params@128':>10} {'risk':>5}  {'fits':<7} {'state':<11} name")
    for b in store.list():
        state = "QUARANTINE" if b.quarantined else "available"
        print(
            f"{b.blueprint_id:<14} {b.tier:>4} {b.parameter_count:>10,} {b.risk:>5.2f}  "
            f"{','.join(b.layer_kinds):<7} {state:<11} {b.name}"
            + (f"  ({b.quarantine_reason})" if b.quarantined else "")
        )
    return 0


def run_add(args: argparse.Namespace) -> int:
    store = _store(args)
    allowed = dict(args.allow) if args.allow else DEFAULT_ALLOWED
    try:
        blueprint = make_blueprint(
            args.id, args.name or args.id, AdapterKind(args.kind), args.size,
            tier=args.tier, risk=args.risk, allowed_parameters=allowed,
        )  # fmt: skip
        store.add(blueprint, replace=args.replace)
    except ValueError as exc:
        print(f"urza add: {exc}", file=sys.stderr)
        return 1
    print(f"added {blueprint.blueprint_id} ({blueprint.parameter_count:,} parameters at 128)")
    return 0


def run_quarantine(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.quarantine(args.id, args.reason, quarantined=not args.release)
    except UnknownBlueprint:
        print(f"urza quarantine: unknown blueprint {args.id}", file=sys.stderr)
        return 1
    print(f"{args.id}: {'released' if args.release else 'quarantined'}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `urza` and its subcommands to the CLI."""
    urza = commands.add_parser("urza", help="the blueprint library (list, add, quarantine)")
    urza.add_argument(
        "--db", type=Path, help="library file (default: $TAMIYO_URZA_DB or .tamiyo/urza.sqlite)"
    )
    sub = urza.add_subparsers(dest="urza_command", required=True, metavar="ACTION")

    sub.add_parser("list", help="every blueprint, by tier").set_defaults(run=run_list)

    add = sub.add_parser("add", help="add a blueprint")
    add.add_argument("id")
    add.add_argument("--kind", required=True, choices=[k.value for k in AdapterKind])
    add.add_argument("--size", type=int, required=True, help="hidden width, rank or channels")
    add.add_argument("--tier", type=int, default=1)
    add.add_argument("--risk", type=float, default=0.2, help="0 (safe) .. 1 (risky)")
    add.add_argument("--name", default="")
    add.add_argument(
        "--allow", type=_bounds, action="append",
        help="a parameter a command may set, NAME=LOW:HIGH (repeatable)",
    )  # fmt: skip
    add.add_argument("--replace", action="store_true", help="overwrite an existing id")
    add.set_defaults(run=run_add)

    quarantine = sub.add_parser("quarantine", help="quarantine (or release) a blueprint")
    quarantine.add_argument("id")
    quarantine.add_argument("--reason", default="quarantined by operator")
    quarantine.add_argument("--release", action="store_true", help="lift the quarantine")
    quarantine.set_defaults(run=run_quarantine)
