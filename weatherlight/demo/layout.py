"""Where a demo run keeps its files, under its run directory: the one place the demo and
`demo-drain` agree on, so that a killed run can be reopened by its directory alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_INSTANCE = "demo"
"""Weatherlight's instance name in the demo: its consumers are ``demo-<service>``."""


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def key_prefix(self) -> str:
        """The run's own namespace on the server."""
        return f"demo-{self.run_id}"

    @property
    def instance(self) -> str:
        return DEMO_INSTANCE

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def field_reports(self) -> Path:
        return self.root / "field_reports"

    @property
    def simic_db(self) -> Path:
        return self.root / "simic.sqlite3"
