"""Bootstrap intervals of benchmark scores (evaluation/significance.py)."""

from __future__ import annotations

import random
import statistics

import pytest

from ctxcompress.errors import InvalidInputError
from ctxcompress.evaluation import EvalResult, Prediction
from ctxcompress.evaluation.significance import (
    difference_table,
    mean_interval,
    paired_difference,
    paired_ratio,
)


def result(name: str, f1: list[float], ids: list[str] | None = None) -> EvalResult:
    ids = ids or [f"q{i}" for i in range(len(f1))]
    predictions = [
        Prediction(id=i, question="?", prediction="a", golds=["a"], scores={"f1": s, "em": 0.0})
        for i, s in zip(ids, f1, strict=True)
    ]
    return EvalResult(name, 4.0, "qa", predictions, {"f1": sum(f1) / len(f1), "n": len(f1)})


def test_interval_brackets_the_mean_and_is_reproducible():
    rng = random.Random(1)
    r = result("a", [rng.random() for _ in range(100)])
    first, again = mean_interval(r), mean_interval(r)
    assert first == again  # fixed seed: a report is reproducible to the digit
    assert first.low < first.mean < first.high
    assert first.mean == pytest.approx(r.overall["f1"])
    # ~ mean +- 1.96 * sd / sqrt(n) for uniform scores: sd = 0.29, half-width ~0.057.
    assert 0.04 < (first.high - first.low) / 2 < 0.075


def test_point_estimate_is_the_overall_score_to_the_last_bit():
    """The interval table and the results table must print the same mean for a system: these
    scores are a case where numpy's pairwise mean and the exactly rounded mean differ."""
    f1 = [0.25, 0.5, 1 / 3, 0.5, 2 / 3, 1.0, 2 / 3, 1.0, 0.5, 1.0]
    r = result("a", f1)
    r.overall["f1"] = statistics.fmean(f1)  # what the evaluation runner stores
    assert mean_interval(r).mean == r.overall["f1"]


def test_constant_scores_give_a_point_interval():
    interval = mean_interval(result("zeros", [0.0] * 20))
    assert (interval.low, interval.mean, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_pairing_removes_the_shared_item_variance():
    """B is A plus 0.05 on every item: item difficulty varies a lot, the gap does not. The
    unpaired intervals overlap; the paired difference is exactly +0.05 and excludes zero."""
    rng = random.Random(0)
    base = [rng.choice([0.0, 0.3, 0.9]) for _ in range(100)]
    a, b = result("a", base), result("b", [s + 0.05 for s in base])
    ia, ib = mean_interval(a), mean_interval(b)
    assert ia.high > ib.low  # independent intervals cannot tell them apart
    diff = paired_difference(b, a)
    assert diff.mean == pytest.approx(0.05)
    assert diff.low == pytest.approx(0.05) and diff.high == pytest.approx(0.05)
    assert diff.excludes_zero


def test_paired_difference_matches_items_by_id_not_order():
    rng = random.Random(2)
    a = result("a", [rng.random() for _ in range(50)])
    b = result("b", [rng.random() for _ in range(50)])
    shuffled = list(b.predictions)
    rng.shuffle(shuffled)
    b_shuffled = EvalResult("b", 4.0, "qa", shuffled, b.overall)
    assert paired_difference(a, b) == paired_difference(a, b_shuffled)
    noisy = paired_difference(a, b)
    assert noisy.low < noisy.mean < noisy.high and not noisy.excludes_zero


def test_different_items_are_refused():
    a = result("a", [0.1, 0.2, 0.3])
    b = result("b", [0.1, 0.2, 0.3], ids=["q0", "q1", "other"])
    with pytest.raises(InvalidInputError, match="same items"):
        paired_difference(a, b)


def test_unknown_metric_is_refused():
    with pytest.raises(InvalidInputError, match="no metric 'rouge1'"):
        mean_interval(result("a", [0.1, 0.2]), "rouge1")


def test_difference_table_bolds_differences_beyond_the_noise():
    base = [0.0, 0.5, 1.0] * 10
    ref, better = result("ref", base), result("better", [min(1.0, s + 0.5) for s in base])
    rng = random.Random(3)
    noise = result("noise", [min(1.0, max(0.0, s + rng.choice([-0.5, 0.5]))) for s in base])
    table = difference_table([better, noise, ref], [ref, better]).splitlines()
    assert table[0] == "| system | F1 [95% CI] | minus ref | minus better |"
    assert table[2].startswith("| better | 83.3 [") and "| **+33.3 [" in table[2]
    assert table[2].endswith("| (reference) |")
    assert table[3].startswith("| noise |") and "**" not in table[3].split("|")[3]
    assert "(reference)" in table[4] and "| **-33.3 [" in table[4]
    with pytest.raises(InvalidInputError, match="at least one reference"):
        difference_table([ref], [])


def test_paired_ratio_of_means_with_its_interval():
    """B scores 1.5x A on every item: the ratio is exactly 1.5 whatever the resample; with
    noise the interval brackets the point; other items, or an all-zero reference, refused."""
    rng = random.Random(2)
    base = [rng.choice([0.2, 0.4, 0.8]) for _ in range(80)]
    exact = paired_ratio(result("b", [1.5 * s for s in base]), result("a", base))
    assert exact.mean == pytest.approx(1.5)
    assert exact.low == pytest.approx(1.5) and exact.high == pytest.approx(1.5)
    noisy_scores = [min(1.0, s * rng.uniform(0.8, 2.0)) for s in base]
    noisy = paired_ratio(result("b", noisy_scores), result("a", base))
    assert noisy.low < noisy.mean < noisy.high
    assert noisy.mean == pytest.approx(statistics.fmean(noisy_scores) / statistics.fmean(base))
    assert noisy == paired_ratio(result("b", noisy_scores), result("a", base))  # seeded
    with pytest.raises(InvalidInputError, match="not scored on the same items"):
        paired_ratio(result("b", base, [f"x{i}" for i in range(80)]), result("a", base))
    with pytest.raises(InvalidInputError, match="scored 0 on every item"):
        paired_ratio(result("b", base), result("a", [0.0] * 80))
