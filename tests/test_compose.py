"""docker-compose.yml runs real commands of the project (no docker engine needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from weatherlight.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    return set(actions[0].choices or {})  # type: ignore[arg-type]


def test_every_project_service_runs_an_existing_entry_point() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tamiyo-bus"]' in dockerfile
    built = {name: svc for name, svc in compose["services"].items() if "build" in svc}
    assert built, "the stack runs at least one project service"
    known = _subcommands()
    for name, service in built.items():
        assert service["command"][0] in known, f"{name} runs an unknown subcommand"
        build_parser().parse_args(service["command"])  # flags are accepted too


def test_redis_persists_and_is_health_checked_and_prometheus_scrapes_the_exporter() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["healthcheck"]["test"][-1] == "ping"
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]  # fmt: skip
    ports = {f"{name}:{p.split(':')[-1]}" for name, svc in compose["services"].items()
             for p in svc.get("ports", [])}  # fmt: skip
    assert set(targets) <= ports
