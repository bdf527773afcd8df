"""Coverage-guided fuzzing of every decoder (tests/security/fuzz_main.py) for a fixed
number of inputs, when atheris is installed: libFuzzer fails the run on any exception
but RejectedMessage, on an input slower than 10 s and on growth past 1 GiB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "atheris",
    reason="atheris is not installed (pip install atheris); the hypothesis properties of "
    "test_fuzz.py still cover every decoder",
)

ROOT = Path(__file__).resolve().parents[2]
RUNS = 10_000


@pytest.mark.slow
def test_coverage_guided_fuzzing_of_every_decoder_finds_nothing(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "tests.security.fuzz_main", f"-runs={RUNS}", "-seed=17",
        "-rss_limit_mb=1024", "-timeout=10", f"-artifact_prefix={tmp_path}/",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Done {RUNS} runs" in done.stderr
