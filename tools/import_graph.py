"""Print which top-level packages of the project import which (``make lint`` enforces the
allowed directions with import-linter; this shows the graph itself)."""

from __future__ import annotations

import grimp

PACKAGES = (
    "weatherlight",
    "consumers",
    "producers",
    "tamiyo_bus",
    "leyline_vocab",
    "oona",
    "leyline_pb",
)


def main() -> None:
    graph = grimp.build_graph(*PACKAGES)
    for importer in PACKAGES:
        for imported in PACKAGES:
            if importer != imported and graph.direct_import_exists(
                importer=importer, imported=imported, as_packages=True
            ):
                print(f"{importer} -> {imported}")


if __name__ == "__main__":
    main()
