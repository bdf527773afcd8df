"""Generate the Leyline Python bindings (leyline_pb/) from proto/leyline.proto.

The bindings are committed so that users need no protobuf compiler; the test suite
regenerates them into a temporary folder and fails when they differ from the
committed files (tests/test_contracts.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "leyline_pb"
GENERATED = ("leyline_pb2.py", "leyline_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugin into out_dir."""
    from grpc_tools import protoc  # dev dependency, imported only when generating

    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found beside this Python: install '.[dev]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--mypy_out={out_dir}",
        str(PROTO_DIR / "leyline.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on proto/leyline.proto")
    return [out_dir / name for name in GENERATED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if bindings drifted")
    ns = parser.parse_args()
    if not ns.check:
        for path in generate(OUT_DIR):
            print(f"wrote {path.relative_to(ROOT)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        drifted = [
            p.name for p in generate(Path(tmp)) if p.read_bytes() != (OUT_DIR / p.name).read_bytes()
        ]
    if drifted:
        raise SystemExit(f"generated bindings drifted from proto/: {drifted}; run `make proto`")
    print("bindings match proto/leyline.proto")


if __name__ == "__main__":
    main()
