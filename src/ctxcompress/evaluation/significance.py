"""How sure a benchmark's comparisons are: bootstrap confidence intervals over the test items.

On 100 test items one system's F1 carries a standard error of about 3-4 points, so "A beats
B" is a statement about the *paired* difference: both systems answered the same questions,
and resampling the questions (not the two systems independently) removes the variance the
two share (Efron & Tibshirani 1993, ch. 16; Koehn 2004 for the paired bootstrap in NLP).
The intervals are scipy's percentile bootstrap (``scipy.stats.bootstrap``) with a fixed
seed, so a report is reproducible to the digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

import numpy as np

from ..errors import InvalidInputError
from .runner import QA_COLUMNS, SUMMARY_COLUMNS, EvalResult

RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap confidence interval (same units as the scores, 0-1)."""

    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (for differences)."""
        return self.low > 0 or self.high < 0

    def percent(self, signed: bool = False) -> str:
        """``"19.6 [12.8, 26.9]"`` in %; ``signed`` writes a sign on the mean (differences)."""
        head = f"{100 * self.mean:+.1f}" if signed else f"{100 * self.mean:.1f}"
        return f"{head} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def _scores(result: EvalResult, metric: str) -> dict[str, float]:
    if not result.predictions:
        raise InvalidInputError(f"{result.method}: no predictions to bootstrap")
    if metric not in result.predictions[0].scores:
        known = ", ".join(result.predictions[0].scores)
        raise InvalidInputError(f"{result.method} has no metric {metric!r}; it has {known}")
    return {p.id: p.scores[metric] for p in result.predictions}


def _mean_interval(values: np.ndarray, resamples: int, seed: int) -> Interval:
    """The mean of ``values`` with its percentile-bootstrap interval."""
    try:
        from scipy.stats import bootstrap
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "confidence intervals need scipy: pip install scipy "
            "(or pip install 'ctxcompress[eval]')"
        ) from e

    # The exactly rounded mean, as EvalResult.overall is computed: np.mean's pairwise sum can
    # differ in the last bit, which flips the rounding of a tie such as 9.15 -> "9.1" vs "9.2".
    point = fmean(values.tolist())
    if np.ptp(values) == 0:
        return Interval(point, point, point)  # every item scored the same: nothing varies
    res = bootstrap(
        (values,),
        np.mean,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return Interval(point, float(low), float(high))


def mean_interval(
    result: EvalResult, metric: str = "f1", resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """The mean of ``metric`` over the result's items with its 95% bootstrap interval."""
    scores = np.array(list(_scores(result, metric).values()), dtype=float)
    return _mean_interval(scores, resamples, seed)


def interval_of(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean of any paired series (e.g. per-step loss differences of two training runs on
    the same batches) with its 95% percentile-bootstrap interval."""
    if not len(values):
        raise InvalidInputError("no values to bootstrap")
    return _mean_interval(np.asarray(values, dtype=float), resamples, seed)


def _paired_scores(
    result: EvalResult, reference: EvalResult, metric: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Both results' scores by item id; refused unless they answered exactly the same items."""
    a, b = _scores(result, metric), _scores(reference, metric)
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise InvalidInputError(
            f"{result.method} and {reference.method} were not scored on the same items "
            f"(only in the first: {only_a[:3]}{'...' if len(only_a) > 3 else ''}; only in the "
            f"second: {only_b[:3]}{'...' if len(only_b) > 3 else ''}); evaluate both on the "
            "same data and --limit"
        )
    return a, b


def paired_difference(
    result: EvalResult,
    reference: EvalResult,
    metric: str = "f1",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``result`` minus ``reference`` on the same items, with a paired 95% bootstrap interval.

    Both must have answered exactly the same item ids (any order); otherwise the difference
    would mix questions and is refused.
    """
    a, b = _paired_scores(result, reference, metric)
    # Resampling items and differencing is the same as resampling the per-item differences.
    differences = np.array([a[i] - b[i] for i in sorted(a)], dtype=float)
    return _mean_interval(differences, resamples, seed)


def paired_ratio(
    result: EvalResult,
    reference: EvalResult,
    metric: str = "f1",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``mean(result) / mean(reference)`` on the same items, with a paired 95% bootstrap
    interval (the items are resampled together): for targets stated as ratios, e.g. "F1 at
    least 1.3x trained truncation's". Refused when the reference's mean is zero."""
    a, b = _paired_scores(result, reference, metric)
    ids = sorted(a)
    x = np.array([a[i] for i in ids], dtype=float)
    y = np.array([b[i] for i in ids], dtype=float)
    if y.sum() == 0:
        raise InvalidInputError(f"{reference.method} scored 0 on every item: no ratio to it")
    point = fmean(x.tolist()) / fmean(y.tolist())
    # The percentile bootstrap by hand (scipy's turns the whole interval into nan as soon as
    # one resample's reference mean is 0, common on small sets of 0/1 scores): resample the
    # items, keep the resamples whose reference mean is positive.
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    num, den = x[draws].mean(axis=1), y[draws].mean(axis=1)
    ratios = num[den > 0] / den[den > 0]
    tail = 50 * (1 - CONFIDENCE)
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return Interval(point, float(low), float(high))


def _metric_name(metric: str) -> str:
    return dict(QA_COLUMNS + SUMMARY_COLUMNS).get(metric, metric)


def difference_legend(references: Sequence[EvalResult], metric: str = "f1") -> str:
    """The sentence that says how to read :func:`difference_table` (for a report page)."""
    names = " and ".join(f"`{r.method}`" for r in references)
    return (
        f"{_metric_name(metric)} (%) with its 95% bootstrap interval over the test items, and "
        f"each system minus {names} on the same items (paired bootstrap, "
        "`ctxcompress.evaluation.paired_difference`); **bold**: the interval excludes zero."
    )


def difference_table(
    results: Sequence[EvalResult],
    references: Sequence[EvalResult],
    metric: str = "f1",
) -> str:
    """One row per system: ``metric`` (in %) with its 95% interval, then a column per reference
    with the paired difference from it and its interval, in **bold** where the interval
    excludes zero (the gap is larger than the items' sampling noise)."""
    if not references:
        raise InvalidInputError("difference_table needs at least one reference result")
    name = _metric_name(metric)
    head = ["system", f"{name} [95% CI]", *[f"minus {r.method}" for r in references]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.method, mean_interval(r, metric).percent()]
        for ref in references:
            if r is ref:
                cells.append("(reference)")
                continue
            diff = paired_difference(r, ref, metric)
            text = diff.percent(signed=True)
            cells.append(f"**{text}**" if diff.excludes_zero else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
