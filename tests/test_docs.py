"""The configuration reference is complete and true: every settings dataclass of the
packages has its own table in docs/configuration.md (a ``### `Name``` heading), with a
row for each of its fields and nothing else, and each row shows the default the code
has."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
PACKAGES = ("oona", "leyline_vocab", "tamiyo_bus", "consumers", "producers", "weatherlight")
# Settings dataclasses whose names do not end in "Settings".
ALSO = frozenset({"Thresholds", "Weights", "CategoryRule", "RetryPolicy", "OverloadPolicy"})
ROW = re.compile(r"^\|\s*`([A-Za-z_]\w*)`\s*\|\s*(.*?)\s*\|.*\|\s*$")
HEADING = re.compile(r"^#{2,4} `([A-Za-z_]\w*)`")


def settings_classes() -> list[type]:
    found: dict[str, type] = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (
                    inspect.isclass(obj)
                    and obj.__module__ == module.__name__
                    and dataclasses.is_dataclass(obj)
                    and (name.endswith("Settings") or name in ALSO)
                ):
                    found[f"{module.__name__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


def default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING, field.name
    return field.default_factory()


def render(value: Any) -> str:
    """A default as the reference shows it."""
    if dataclasses.is_dataclass(value):
        return f"`{type(value).__name__}()`"
    if isinstance(value, enum.Enum):
        return f"`{value.name if isinstance(value, int) else value.value}`"
    if isinstance(value, bool) or value is None:
        return f"`{value}`"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if value.is_integer() else f"{value:,}"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    if isinstance(value, frozenset):
        return f"`{sorted(value)}`"
    return f"`{value!r}`"


def reference_tables() -> dict[str, dict[str, str]]:
    """Heading name -> {field: default cell} of the table under it."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        heading = HEADING.match(line)
        if heading:
            assert heading.group(1) not in tables, f"two tables for {heading.group(1)}"
            current = tables[heading.group(1)] = {}
        elif line.startswith("#"):
            current = None
        elif current is not None and (row := ROW.match(line)):
            current[row.group(1)] = row.group(2)
    return tables


def test_every_settings_class_has_its_own_true_table() -> None:
    classes = settings_classes()
    assert len(classes) > 30  # the walk found the packages' settings
    assert len({c.__name__ for c in classes}) == len(classes), "settings class names collide"
    tables = reference_tables()
    problems: list[str] = []
    for cls in classes:
        table = tables.get(cls.__name__)
        if table is None:
            problems.append(f"{cls.__name__}: no table")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        problems += [f"{cls.__name__}.{name}: no row" for name in fields.keys() - table.keys()]
        problems += [
            f"{cls.__name__}.{name}: no such field" for name in table.keys() - fields.keys()
        ]
        for name in fields.keys() & table.keys():
            expected = render(default_of(fields[name]))
            if table[name] != expected:
                problems.append(f"{cls.__name__}.{name}: default {table[name]} != {expected}")
    assert problems == []
