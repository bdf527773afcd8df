"""The configuration reference is complete: every field of every settings dataclass in
the packages is named in docs/, and so is the class."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("oona", "tamiyo_bus", "consumers", "producers")
# Settings dataclasses whose names do not end in "Settings".
ALSO = frozenset({"Thresholds", "Weights", "CategoryRule", "RetryPolicy", "OverloadPolicy"})
THRESHOLD_SUFFIXES = ("_base", "_emergency")  # Thresholds' fields, documented by prefix


def documented_names() -> set[str]:
    """Every identifier inside a `code span` of the docs and the README."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    text += (ROOT / "README.md").read_text(encoding="utf-8")
    names: set[str] = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        names.update(re.findall(r"[A-Za-z_]\w*", span))
    return names


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


def undocumented(cls: type, names: set[str]) -> list[str]:
    missing = [] if cls.__name__ in names else [cls.__name__]
    for field in dataclasses.fields(cls):
        name = field.name
        if cls.__name__ == "Thresholds" and name.endswith(THRESHOLD_SUFFIXES):
            name = name.rsplit("_", 1)[0]
        if name not in names:
            missing.append(f"{cls.__name__}.{field.name}")
    return missing


def test_every_setting_is_in_the_docs() -> None:
    names = documented_names()
    classes = settings_classes()
    assert len(classes) > 30  # the walk found the packages' settings
    missing = [m for cls in classes for m in undocumented(cls, names)]
    assert missing == []
