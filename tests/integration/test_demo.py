"""`tamiyo-bus demo` end to end on the real server: one short run, its summary, report
and field reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weatherlight.cli import main
from weatherlight.settings import ENV_REDIS_URL, ENV_URZA_DB

EPOCHS = "6"


def test_demo_runs_end_to_end_and_writes_its_report(
    tmp_path: Path,
    server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(ENV_REDIS_URL, server_url)
    monkeypatch.setenv(ENV_URZA_DB, str(tmp_path / "urza.sqlite"))
    assert main(["demo", "--epochs", EPOCHS, "--out", str(tmp_path / "runs")]) == 0

    printed = capsys.readouterr().out
    assert "status page http://127.0.0.1:" in printed
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = int(EPOCHS) * (1438 // 128)  # digits' training split at the demo's batch 128
    assert summary["steps"] == steps
    assert 0 < summary["decisions"] < steps  # Tamiyo chose her cadence
    assert summary["decision_mode"] == "ahead"
    assert summary["rejected"] == {}  # every command passed verification
    assert summary["applied"] + sum(summary["refused"].values()) == summary["decisions"]
    assert summary["final_val_accuracy"] > 0.5  # a narrow host, a few epochs
    for line in summary_lines(summary):
        assert line in printed

    report = (run_dir / "report.html").read_text()
    assert report.count("<svg") == 6  # loss, accuracy, lifecycle, latency, risk x2
    for title in ("Loss", "Accuracy", "Seed lifecycle", "evaluate_step latency", "Risk"):
        assert title in report
    assert (run_dir / "simic.sqlite3").exists()
    assert "0 pending, 0 parked" in summary["services"]["field reports"]
    experience = summary["services"]["experience"]
    assert int(experience.split()[0]) >= 1 and experience.endswith(" 0 dropped")
    assert summary["policy"].startswith("the learned default ppo-")  # the shipped policy
    assert 0.5 < summary["no_growth"]["final_val_accuracy"] <= 1.0  # the same run, no growth
    assert "vs no growth  val " in printed and "the same run with no growth" in printed


def summary_lines(summary: dict[str, object]) -> list[str]:
    """A few figures that must appear in the printed summary."""
    return [f"{summary['steps']:,} steps", f"decisions     {summary['decisions']:,} by "]
