"""Coverage-guided fuzzing of every decoder with atheris (libFuzzer), run as a script:

    python -m tests.security.fuzz_main -runs=20000 -rss_limit_mb=1024 -timeout=10

libFuzzer stops at the first input that raises anything but RejectedMessage, that
takes longer than ``-timeout`` seconds, or that grows the process past
``-rss_limit_mb``, and exits non-zero with the input saved; otherwise it exits 0
after ``-runs`` inputs. test_fuzz_atheris.py runs it when atheris is installed.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["oona", "consumers", "tamiyo_bus", "leyline_vocab"]):
    from tests.security import fuzz_targets

if __name__ == "__main__":
    atheris.Setup(sys.argv, fuzz_targets.fuzz_one)
    atheris.Fuzz()
