"""What the status page shows of Simic's learner, read from Nissa's metric store (pure).

The learner's telemetry (weatherlight/learner.py) is all gauges, and a gauge's latest
value is exactly what the store keeps, so this view needs no state of its own; when the
learner's series expire from the store the page says again that no learner was seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from leyline_vocab import telemetry as vocab
from leyline_vocab.roles import SOURCE_SIMIC
from leyline_vocab.schema import Labels, metric_spec

LEARNER_PREFIX = "learner_"
# The learner's unlabelled gauges; the view keys them by name without the prefix.
FIGURES = (
    vocab.METRIC_LEARNER_POLICY_LOSS,
    vocab.METRIC_LEARNER_VALUE_LOSS,
    vocab.METRIC_LEARNER_ENTROPY,
    vocab.METRIC_LEARNER_APPROX_KL,
    vocab.METRIC_LEARNER_CLIP_FRACTION,
    vocab.METRIC_LEARNER_EXPLAINED_VARIANCE,
    vocab.METRIC_LEARNER_LEARNING_RATE,
    vocab.METRIC_LEARNER_GRAD_NORM,
    vocab.METRIC_LEARNER_UPDATES,
    vocab.METRIC_LEARNER_POLICY_VERSION,
    vocab.METRIC_LEARNER_REPLAY_FILL,
    vocab.METRIC_LEARNER_REJECTED_IN_ROW,
)

GaugeReader = Callable[[str], Mapping[Labels, float]]


def learner_metric(name: str) -> str:
    """A learner gauge's name as the hub normalises it (``simic.learner_...``)."""
    return metric_spec(SOURCE_SIMIC, name, "").name


def _by_label(series: Mapping[Labels, float], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in series.items():
        key = dict(labels).get(label)
        if key is not None:
            out[key] = value
    return dict(sorted(out.items()))


def learning_view(read: GaugeReader) -> dict[str, object] | None:
    """The learner's latest figures, its candidates by outcome and its experience counts
    by state, from `read` (a gauge's last value per label set); None when the store
    holds none of its gauges."""
    figures: dict[str, float] = {}
    for name in FIGURES:
        value = read(learner_metric(name)).get(())
        if value is not None:
            figures[name.removeprefix(LEARNER_PREFIX)] = value
    candidates = _by_label(
        read(learner_metric(vocab.METRIC_LEARNER_CANDIDATES)), vocab.LABEL_OUTCOME
    )
    experience = _by_label(read(learner_metric(vocab.METRIC_LEARNER_EXPERIENCE)), vocab.LABEL_STATE)
    if not (figures or candidates or experience):
        return None
    return {"figures": figures, "candidates": candidates, "experience": experience}
