"""Metrics of METHODS.md §6 against hand-computed values (no models involved)."""

from __future__ import annotations

import importlib.util

import pytest

from ctxcompress.errors import InvalidInputError
from ctxcompress.evaluation.metrics import (
    exact_match,
    normalize_answer,
    qa_scores,
    rouge_scores,
    sac_exact_match,
    sac_rouge1_f,
    score_qa,
    score_summaries,
    token_f1,
)

needs_rouge = pytest.mark.skipif(
    importlib.util.find_spec("rouge_score") is None,
    reason="rouge-score not installed (pip install 'ctxcompress[eval]')",
)


# ------------------------------------------------------------------ normalize_answer (SQuAD)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("The Cat", "cat"),  # case + leading article
        ("theater", "theater"),  # article inside a word is kept
        ("The theater", "theater"),
        ("an apple a day", "apple day"),
        ("Anna and Theo", "anna and theo"),  # "an"/"the" only as whole words
        ("1,000", "1000"),  # punctuation inside numbers is deleted, not split
        ("3.14", "314"),
        ("Wilhelm Röntgen", "wilhelm röntgen"),  # non-ASCII letters survive
        ("ÉCOLE", "école"),
        ("  hello \t\n  world  ", "hello world"),  # whitespace collapse + strip
        ("Paris.", "paris"),
        ("The A-Team", "ateam"),  # official order: punctuation removed *before* articles
        ("“quoted”", "“quoted”"),  # typographic quotes are not in string.punctuation
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


# ------------------------------------------------------------------ EM / F1 (SQuAD / MRQA)


def test_exact_match_basic():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0
    assert exact_match("1000", ["1,000"]) == 1.0
    assert exact_match("Röntgen", ["Rontgen"]) == 0.0  # no accent folding


def test_max_over_golds():
    golds = ["Paris", "the city of Paris"]
    assert exact_match("city of paris", golds) == 1.0
    # F1 vs "Paris": P = 1/3, R = 1 -> 0.5 ; vs "city of paris": 1.0 -> max 1.0
    assert token_f1("city of paris", golds) == 1.0
    # "Paris France" vs "Paris": P=1/2, R=1 -> 2/3 ; vs "city of paris": P=1/2, R=1/3 -> 0.4
    assert token_f1("Paris France", golds) == pytest.approx(2 / 3)


def test_f1_partial_overlap_by_hand():
    # pred  -> "cat sat on mat" (4 tokens); gold -> "cat on mat" (3 tokens)
    # overlap = {cat, on, mat} = 3; P = 3/4, R = 3/3; F1 = 2*0.75*1/(1.75) = 6/7
    assert token_f1("the cat sat on the mat", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert exact_match("the cat sat on the mat", ["a cat on a mat"]) == 0.0


def test_f1_counts_multiset_overlap():
    # pred "paris paris" vs gold "paris": overlap clipped to 1; P = 1/2, R = 1 -> 2/3
    assert token_f1("Paris Paris", ["Paris"]) == pytest.approx(2 / 3)


def test_empty_prediction():
    assert exact_match("", ["Paris"]) == 0.0
    assert token_f1("", ["Paris"]) == 0.0
    assert token_f1("   ", ["Paris"]) == 0.0


def test_both_empty_follows_squad_v11():
    # Official v1.1 / MRQA: EM compares normalised strings ("" == "") -> 1; F1 has no common
    # token -> 0 (only the SQuAD v2.0 script returns 1 here).
    assert exact_match("", ["The"]) == 1.0
    assert token_f1("", ["The"]) == 0.0
    assert token_f1("a", [""]) == 0.0


def test_case_and_punctuation_insensitive():
    assert token_f1("PARIS!", ["paris"]) == 1.0
    assert exact_match("  Paris  ", ["paris"]) == 1.0


# ------------------------------------------------------------------ SAC-paper convention


def test_sac_em_is_raw_and_case_sensitive():
    assert sac_exact_match("Paris", ["Paris"]) == 1.0
    assert sac_exact_match(" Paris\n", ["Paris "]) == 1.0  # both sides stripped
    assert sac_exact_match("paris", ["Paris"]) == 0.0
    assert sac_exact_match("Paris.", ["Paris"]) == 0.0
    assert sac_exact_match("The Paris", ["Paris"]) == 0.0


def test_sac_uses_first_gold_only():
    golds = ["Paris", "London"]
    assert sac_exact_match("London", golds) == 0.0
    assert sac_rouge1_f("London", golds) == 0.0
    assert exact_match("London", golds) == 1.0  # the standard metric takes the max
    assert token_f1("London", golds) == 1.0


def test_sac_rouge1_period_splitting():
    assert sac_rouge1_f("Paris.", ["Paris"]) == 1.0
    assert sac_rouge1_f("Paris. France.", ["Paris France"]) == 1.0
    assert sac_rouge1_f("paris", ["Paris"]) == 0.0  # no lower-casing
    assert sac_rouge1_f("Paris,", ["Paris"]) == 0.0  # only whitespace and '.' split


def test_sac_rouge1_partial_by_hand():
    # pred tokens [The, Eiffel, Tower]; gold [Eiffel, Tower, in, Paris]; overlap 2
    # P = 2/3, R = 2/4; F = 2*(2/3)*(1/2) / (2/3 + 1/2) = (2/3)/(7/6) = 4/7
    assert sac_rouge1_f("The Eiffel Tower", ["Eiffel Tower in Paris"]) == pytest.approx(4 / 7)
    # clipped counts: [a, a] vs [a]: overlap 1, P = 1/2, R = 1 -> 2/3
    assert sac_rouge1_f("a a", ["a"]) == pytest.approx(2 / 3)


def test_sac_empty_scores_zero():
    assert sac_exact_match("", ["Paris"]) == 0.0
    assert sac_exact_match("  ", [""]) == 0.0
    assert sac_rouge1_f("", ["Paris"]) == 0.0
    assert sac_rouge1_f(" . ", ["Paris"]) == 0.0
    assert sac_rouge1_f("Paris", [""]) == 0.0


# ------------------------------------------------------------------ ROUGE (summaries)


@needs_rouge
def test_rouge_by_hand_equal_length():
    # pred: the cat sat on the mat / ref: the cat lay on the mat (all tokens <= 3 chars: no
    # stemming). ROUGE-1: overlap the x2, cat, on, mat = 5 of 6 both ways -> 5/6.
    # ROUGE-2: bigrams {the cat, on the, the mat} shared of 5 each -> 3/5.
    # ROUGE-L: LCS "the cat on the mat" = 5 -> 5/6.
    s = rouge_scores("the cat sat on the mat", "the cat lay on the mat")
    assert set(s) == {"rouge1", "rouge2", "rougeL"}
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)


@needs_rouge
def test_rouge_by_hand_unequal_length():
    # pred "the cat" vs ref "the cat sat":
    # R1: P = 2/2, R = 2/3 -> F = 0.8 ; R2: P = 1/1, R = 1/2 -> 2/3 ; RL: LCS 2 -> 0.8
    s = rouge_scores("The cat", "the cat sat")
    assert s["rouge1"] == pytest.approx(0.8)
    assert s["rouge2"] == pytest.approx(2 / 3)
    assert s["rougeL"] == pytest.approx(0.8)


@needs_rouge
def test_rouge_stemming_and_empty():
    assert rouge_scores("running dogs", "run dog")["rouge1"] == pytest.approx(1.0)
    assert rouge_scores("", "a summary") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@needs_rouge
def test_score_summaries():
    out = score_summaries(
        ["the cat sat on the mat", "The cat"], ["the cat lay on the mat", "the cat sat"]
    )
    assert out["n"] == 2
    assert out["rouge1"] == pytest.approx((5 / 6 + 0.8) / 2)
    assert out["rouge2"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert out["rougeL"] == pytest.approx((5 / 6 + 0.8) / 2)


# ------------------------------------------------------------------ aggregates


def test_qa_scores_bundle():
    s = qa_scores("Paris.", ["Paris", "City of Light"])
    assert s == {"em": 1.0, "f1": 1.0, "sac_em": 0.0, "sac_f1": 1.0}


def test_score_qa_means():
    preds = ["Paris.", "the cat sat on the mat", ""]
    golds = [["Paris"], ["a cat on a mat"], ["London"]]
    out = score_qa(preds, golds)
    assert out["n"] == 3
    assert out["em"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx((1 + 6 / 7 + 0) / 3)
    assert out["sac_em"] == 0.0
    # SAC ROUGE-1 of example 2: [the,cat,sat,on,the,mat] vs [a,cat,on,a,mat]: overlap 3,
    # P = 3/6, R = 3/5 -> F = 2*(1/2)*(3/5)/(1/2+3/5) = (3/5)/(11/10) = 6/11
    assert out["sac_f1"] == pytest.approx((1 + 6 / 11 + 0) / 3)
    assert all(0.0 <= out[k] <= 1.0 for k in ("em", "f1", "sac_em", "sac_f1"))


@pytest.mark.parametrize(
    "preds,golds,match",
    [
        (["a", "b"], [["a"]], "differ in length"),
        ([], [], "empty"),
        (["a"], [[]], "example 0: golds is an empty list"),
        (["a"], ["a"], "list of answer strings"),  # bare str instead of a list of answers
        ([None], [["a"]], "prediction must be a str"),
        (["a"], [["a", 3]], "must be a str"),
        ("abc", [["a"], ["b"], ["c"]], "predictions must be a list"),
    ],
)
def test_score_qa_errors(preds, golds, match):
    with pytest.raises(InvalidInputError, match=match):
        score_qa(preds, golds)


def test_single_example_errors():
    with pytest.raises(InvalidInputError, match="empty list"):
        token_f1("a", [])
    with pytest.raises(InvalidInputError, match="empty list"):
        sac_exact_match("a", [])
    with pytest.raises(InvalidInputError, match="not 'Paris'"):
        exact_match("Paris", "Paris")


def test_score_summaries_errors():
    with pytest.raises(InvalidInputError, match="differ in length"):
        score_summaries(["a"], ["a", "b"])
    with pytest.raises(InvalidInputError, match="empty"):
        score_summaries([], [])
    with pytest.raises(InvalidInputError, match="example 0"):
        score_summaries([None], ["a"])
