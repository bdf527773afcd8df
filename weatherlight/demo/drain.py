"""`tamiyo-bus demo-drain RUN_DIR`: deliver the field reports of a demo run that died.

A demo killed without warning leaves, in its run directory, its field-report log (the
reports it wrote and the windows still open), its embedded server's append-only file
(the streams and Simic's group, entries in flight included), Simic's store and the
run's keys. Draining reopens all of them under the run's id, key prefix and signers:
the log's open windows are closed as the run ended (each becomes a report, as for a
run that finished), every report not yet acknowledged is published again, Simic's
intake stores what reaches it (a report stored before the crash is recognised and
acked again) and the command returns once every report is acknowledged, or when
`--timeout-s` ran out (exit status 1, with what is still pending). Training is not
resumed: its state died with the process.

`python -m weatherlight.demo.drain RUN_DIR` runs it without the trainer's modules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from consumers.simic import SimicSettings
from leyline_vocab.roles import SOURCE_WEATHERLIGHT
from leyline_vocab.telemetry import SOURCE_TAMIYO
from oona.bus import Bus
from oona.server import EmbeddedServer
from oona.settings import OonaSettings
from tamiyo_bus.reports.book import ReportState
from tamiyo_bus.reports.delivery import ReportDelivery
from tamiyo_bus.reports.reporter import FieldReporter, ReportSettings
from weatherlight.demo.layout import RunLayout
from weatherlight.role_keys import RoleKeys
from weatherlight.services import Weatherlight, simic_service
from weatherlight.settings import SystemSettings
from weatherlight.supervisor import ServiceSpec

EXIT_PENDING = 1
POLL_S = 0.05


def run_server(layout: RunLayout, oona: OonaSettings) -> tuple[OonaSettings, EmbeddedServer | None]:
    """The run's bus: its embedded server (restarted from its append-only file), or the
    configured server; the run's key prefix either way."""
    server = None
    if not oona.redis_url:
        server = EmbeddedServer(
            data_dir=layout.redis, appendonly=oona.appendonly, appendfsync=oona.appendfsync
        ).start()
        oona = oona.with_overrides(redis_url=server.url)
    return oona.with_overrides(key_prefix=layout.key_prefix), server


async def drain(layout: RunLayout, oona: OonaSettings, timeout_s: float) -> dict[ReportState, int]:
    """Deliver every report of the run's log; returns the final counts by state."""
    keys = RoleKeys.load(layout.keys)
    simic = SimicSettings(db_path=layout.simic_db)
    weatherlight = Weatherlight(
        [ServiceSpec("simic", simic_service(simic))],
        oona=oona,
        signer=keys.signer(SOURCE_WEATHERLIGHT),
        keyring=keys.keyring,
        instance=layout.instance,
    )
    bus = Bus.connect(oona, keys.signer(SOURCE_TAMIYO), source=SOURCE_TAMIYO)
    reporter = FieldReporter(ReportSettings(wal_dir=layout.field_reports), metrics=bus.metrics)
    reporter.start()
    stop = asyncio.Event()
    try:
        await weatherlight.start()
        reporter.on_run_end(layout.run_id)  # the windows the crash left open
        await asyncio.to_thread(reporter.flush)
        delivery = asyncio.create_task(ReportDelivery(reporter, bus, keys.keyring).run(stop))
        deadline = time.monotonic() + timeout_s
        while reporter.book.counts()[ReportState.PENDING] and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        stop.set()
        await delivery
        return reporter.book.counts()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await weatherlight.stop()
        reporter.close()
        await bus.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    layout = RunLayout(args.run_dir)
    if not layout.field_reports.is_dir() or not layout.keys.is_dir():
        print(f"demo-drain: {args.run_dir} holds no demo run (no field_reports/ or keys/)",
              file=sys.stderr)  # fmt: skip
        return 2
    oona, server = run_server(layout, SystemSettings.from_env().oona)
    try:
        counts = asyncio.run(drain(layout, oona, args.timeout_s))
    finally:
        if server is not None:
            server.stop()
    pending = counts[ReportState.PENDING]
    print(f"demo-drain {layout.run_id}: {sum(counts.values())} field reports, "
          f"{counts[ReportState.ACKED]} acked by Simic, {pending} pending, "
          f"{counts[ReportState.PARKED]} parked", flush=True)  # fmt: skip
    return EXIT_PENDING if pending else 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo-drain", help="deliver the field reports of a demo run that was killed"
    )
    parser.add_argument("run_dir", type=Path, help="the run's directory (runs/<run id>)")
    parser.add_argument(
        "--timeout-s", type=float, default=60.0, help="how long to wait for Simic's acks"
    )
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weatherlight.demo.drain")
    commands = parser.add_subparsers(dest="command")
    register(commands)
    args = parser.parse_args(["demo-drain", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
