"""`tamiyo-bus bus-exporter`: serve the bus's stream, group and dead-letter state to
Prometheus (oona.exporter.BusCollector reads it at scrape time)."""

from __future__ import annotations

import argparse
import signal
import threading

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY

from oona.connection import open_sync_redis, resolve_url
from oona.exporter import BusCollector
from weatherlight.settings import SystemSettings


def run(args: argparse.Namespace) -> int:
    settings = SystemSettings.from_env().oona
    client = open_sync_redis(resolve_url(settings), settings)
    REGISTRY.register(BusCollector(client, settings.key_prefix))
    server, thread = start_http_server(args.port, addr=args.host)
    print(f"bus exporter on http://{args.host}:{server.server_port}/metrics", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a stop is an orderly exit, status 0
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.shutdown()
    thread.join()
    client.close()
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("bus-exporter", help="serve stream and group state to Prometheus")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9121)
    parser.set_defaults(run=run)
