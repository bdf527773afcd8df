"""The learning curve as a standalone SVG file: each training's mean episode return
per update, with flat reference lines (baselines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tamiyo_bus.learning.trainer import TrainingStats
from weatherlight.demo.svg import STYLE, Series, line_chart

TITLE = "PPO on the simulator: mean episode return per rollout"


def curve_svg(
    trainings: Mapping[str, Sequence[TrainingStats]],
    references: Mapping[str, float] | None = None,
) -> str:
    """One line per training (name -> its updates in order), one dashed line per
    reference value across the whole x range."""
    series = [
        Series(
            name,
            [float(s.update) for s in history],
            [s.mean_episode_return for s in history],
        )
        for name, history in trainings.items()
        if history
    ]
    xs = [x for s in series for x in s.xs]
    if xs:
        span = [min(xs), max(xs)]
        series += [
            Series(name, span, [value, value], dashed=True)
            for name, value in (references or {}).items()
        ]
    chart = line_chart(series, title=TITLE, x_label="update", y_label="episode return")
    # A standalone file carries the classes' style the run report puts in its page.
    return chart.replace(">", f"><style>{STYLE}</style>", 1)


def write_curve(
    path: Path,
    trainings: Mapping[str, Sequence[TrainingStats]],
    references: Mapping[str, float] | None = None,
) -> None:
    """Write the curve atomically (temporary file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(curve_svg(trainings, references), encoding="utf-8")
    tmp.replace(path)
