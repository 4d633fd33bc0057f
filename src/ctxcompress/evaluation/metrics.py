"""Answer-quality metrics, in the two conventions of METHODS.md §6, plus ROUGE for summaries.

**Standard convention (primary)** — the official SQuAD v1.1 evaluation script
(``evaluate-v1.1.py``), which the official MRQA 2019 shared-task script
(``mrqa_official_eval.py``, "adapted from the SQuAD v1.1 official evaluation script")
reuses unchanged for its metric functions:

* :func:`normalize_answer`: lower-case -> drop every character of ``string.punctuation``
  -> replace the whole-word articles ``a``/``an``/``the`` by a space -> collapse whitespace.
* :func:`exact_match`: normalised strings are equal, max over all gold answers.
* :func:`token_f1`: F1 over the multiset (``Counter``) overlap of the normalised
  whitespace tokens, max over all gold answers.

**SAC-paper convention** (for comparison with the tables of arXiv 2510.08907 only):

* :func:`sac_exact_match`: the stripped prediction equals the stripped *first* gold answer,
  character for character (case, punctuation and articles all count).
* :func:`sac_rouge1_f`: ROUGE-1 F against the *first* gold answer, tokens split on whitespace
  and on ``.``, no lower-casing.

Both conventions score a single example in [0, 1]; the aggregates (:func:`score_qa`,
:func:`score_summaries`) report means as fractions in [0, 1], not percentages (the official
scripts multiply by 100 when printing).

**RULER** (Hsieh et al., 2024; long-context synthetic tasks): :func:`string_match`, the share
of the references found in the prediction, case-insensitive (``"all"``: RULER's
``string_match_all``; ``"part"``: 1 if any is found, its ``string_match_part``).

**Summarisation**: ROUGE-1/2/L F-measure from Google's ``rouge-score`` package
(:func:`rouge_scores`), with its default tokeniser and the Porter stemmer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from statistics import fmean
from typing import Any

from ..errors import InvalidInputError
from ..normalization import normalize_answer

__all__ = [
    "QA_KEYS",
    "ROUGE_KEYS",
    "exact_match",
    "normalize_answer",
    "qa_scores",
    "rouge_scores",
    "sac_exact_match",
    "sac_rouge1_f",
    "score_qa",
    "score_summaries",
    "token_f1",
]

#: Keys of :func:`qa_scores` / :func:`score_qa` (besides ``n``).
QA_KEYS = ("em", "f1", "sac_em", "sac_f1")
#: Keys of :func:`rouge_scores` / :func:`score_summaries` (besides ``n``).
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

_SAC_SPLIT = re.compile(r"[\s.]+")


# --------------------------------------------------------------------------------------------
# Standard convention: SQuAD v1.1 / MRQA official
# --------------------------------------------------------------------------------------------


def _em_single(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD v1.1 / MRQA exact match: 1.0 if the normalised prediction equals any normalised
    gold answer (max over ``golds``), else 0.0.

    Note the official-script consequence that a prediction and a gold which both normalise
    to ``""`` (e.g. ``""`` vs ``"The"``) *match* (EM 1.0) while their F1 is 0.0.
    """
    _check_qa_pair(prediction, golds)
    return max(_em_single(prediction, g) for g in golds)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD v1.1 / MRQA token-level F1, max over ``golds``.

    Tokens are the whitespace tokens of :func:`normalize_answer`; the overlap is the multiset
    intersection (``Counter(pred) & Counter(gold)``); precision = overlap / len(pred),
    recall = overlap / len(gold), F1 = 2PR / (P + R).

    As in the official v1.1 script (and MRQA's copy of it), an overlap of zero tokens gives
    0.0 — including an empty prediction, and also the case where prediction *and* gold both
    normalise to nothing. (The SQuAD **v2.0** script differs here: it returns 1.0 when both
    are empty, to score no-answer questions; we do not follow v2.0.)
    """
    _check_qa_pair(prediction, golds)
    return max(_f1_single(prediction, g) for g in golds)


# --------------------------------------------------------------------------------------------
# SAC-paper convention
# --------------------------------------------------------------------------------------------


def _sac_tokens(s: str) -> list[str]:
    """Split on runs of whitespace and ``.``; drop empty pieces; keep case and other
    punctuation (so ``"Paris."`` -> ``["Paris"]``, ``"3.14"`` -> ``["3", "14"]``,
    ``"Paris,"`` -> ``["Paris,"]``)."""
    return [t for t in _SAC_SPLIT.split(s) if t]


def sac_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """SAC-paper EM: 1.0 if ``prediction.strip() == golds[0].strip()``, else 0.0.

    Only the *first* gold answer is used; the comparison is raw string equality (case,
    punctuation and articles all matter) after stripping surrounding whitespace of both
    strings — the one liberty we take, since a decoded answer routinely carries a leading
    space or trailing newline. An empty (or all-whitespace) prediction scores 0.0, even
    against an empty gold.
    """
    _check_qa_pair(prediction, golds)
    answer = prediction.strip()
    if not answer:
        return 0.0
    return float(answer == golds[0].strip())


def sac_rouge1_f(prediction: str, golds: Sequence[str]) -> float:
    """SAC-paper "F1": ROUGE-1 F-measure of ``prediction`` against the *first* gold answer.

    Tokens: split on whitespace and on ``.`` (empty pieces dropped), no lower-casing, no
    stemming, other punctuation kept. Unigram overlap is the clipped multiset intersection;
    F = 2PR / (P + R). An empty answer (no tokens, either side) scores 0.0.
    Example: ``"Paris."`` vs ``"Paris"`` -> 1.0; ``"paris"`` vs ``"Paris"`` -> 0.0.
    """
    _check_qa_pair(prediction, golds)
    pred_tokens = _sac_tokens(prediction)
    gold_tokens = _sac_tokens(golds[0])
    if not pred_tokens or not gold_tokens:
        return 0.0
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------
# Summarisation: ROUGE (Google rouge-score)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ROUGE needs the `rouge-score` package: pip install rouge-score "
            "(or pip install 'ctxcompress[eval]')"
        ) from e
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of ``prediction`` against one ``reference``.

    Computed by Google's ``rouge-score`` package (the ROUGE-1.5.5 re-implementation):
    ``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``. Its tokeniser
    lower-cases, replaces every character outside ``[a-z0-9]`` by a space (so non-ASCII
    letters split words: ``"Röntgen"`` -> ``"r"``, ``"ntgen"``) and Porter-stems tokens longer
    than three characters. ``rougeL`` is sentence-level LCS (not ``rougeLsum``). An empty
    prediction or reference scores 0.0. Returns ``{"rouge1", "rouge2", "rougeL"}`` in [0, 1].
    """
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise InvalidInputError(
            "rouge_scores expects two str (prediction, reference), got "
            f"{type(prediction).__name__} and {type(reference).__name__}"
        )
    scores = _rouge_scorer().score(reference, prediction)  # signature: score(target, pred)
    return {k: float(scores[k].fmeasure) for k in ROUGE_KEYS}


def string_match(prediction: str, references: Sequence[str], mode: str = "all") -> float:
    """RULER's string match of one prediction, in [0, 1] (see the module docstring)."""
    if mode not in ("all", "part"):
        raise ValueError(f"string_match mode must be 'all' or 'part', got {mode!r}")
    if not references:
        return 0.0
    found = [r.lower() in prediction.lower() for r in references]
    return sum(found) / len(found) if mode == "all" else float(any(found))


# --------------------------------------------------------------------------------------------
# Per-example bundle and aggregates
# --------------------------------------------------------------------------------------------


def qa_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """All four QA metrics of one example: ``em``, ``f1`` (standard, max over golds) and
    ``sac_em``, ``sac_f1`` (SAC-paper convention, first gold only), each in [0, 1]."""
    _check_qa_pair(prediction, golds)
    return {
        "em": exact_match(prediction, golds),
        "f1": token_f1(prediction, golds),
        "sac_em": sac_exact_match(prediction, golds),
        "sac_f1": sac_rouge1_f(prediction, golds),
    }


def score_qa(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Mean ``em``, ``f1``, ``sac_em``, ``sac_f1`` (fractions in [0, 1]) over aligned
    ``predictions`` / ``golds`` lists, plus ``n``. ``golds[i]`` is the list of acceptable
    answers of example ``i`` (non-empty; its first entry is the one the SAC convention uses).

    Raises :class:`~ctxcompress.errors.InvalidInputError` if the lists differ in length, are
    empty, or an entry has the wrong type or an empty gold list.
    """
    _check_aligned(predictions, golds, "golds")
    per_example = []
    for i, (p, g) in enumerate(zip(predictions, golds, strict=True)):
        try:
            per_example.append(qa_scores(p, g))
        except InvalidInputError as e:
            raise InvalidInputError(f"example {i}: {e}") from None
    out: dict[str, Any] = {k: fmean(s[k] for s in per_example) for k in QA_KEYS}
    out["n"] = len(per_example)
    return out


def score_summaries(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Mean ROUGE-1/2/L F (fractions in [0, 1]) of aligned ``predictions`` / ``references``
    (one reference string per example), plus ``n``. See :func:`rouge_scores`.

    Raises :class:`~ctxcompress.errors.InvalidInputError` if the lists differ in length, are
    empty, or an entry is not a str.
    """
    _check_aligned(predictions, references, "references")
    per_example = []
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        try:
            per_example.append(rouge_scores(p, r))
        except InvalidInputError as e:
            raise InvalidInputError(f"example {i}: {e}") from None
    out: dict[str, Any] = {k: fmean(s[k] for s in per_example) for k in ROUGE_KEYS}
    out["n"] = len(per_example)
    return out


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_qa_pair(prediction: object, golds: object) -> None:
    if not isinstance(prediction, str):
        raise InvalidInputError(f"prediction must be a str, got {type(prediction).__name__}")
    if isinstance(golds, str) or not isinstance(golds, Sequence):
        raise InvalidInputError(
            "golds must be a list of answer strings (e.g. ['Paris'], not 'Paris'), got "
            f"{type(golds).__name__}"
        )
    if len(golds) == 0:
        raise InvalidInputError("golds is an empty list: each example needs at least one answer")
    bad = [type(g).__name__ for g in golds if not isinstance(g, str)]
    if bad:
        raise InvalidInputError(f"every gold answer must be a str, got {', '.join(bad)}")


def _check_aligned(predictions: Sequence[Any], others: Sequence[Any], name: str) -> None:
    for label, seq in (("predictions", predictions), (name, others)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise InvalidInputError(f"{label} must be a list, got {type(seq).__name__}")
    if len(predictions) != len(others):
        raise InvalidInputError(
            f"predictions and {name} differ in length: {len(predictions)} vs {len(others)}"
        )
    if len(predictions) == 0:
        raise InvalidInputError("nothing to score: predictions is empty")
