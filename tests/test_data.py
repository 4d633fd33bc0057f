"""The data layer: spec parsing, shared NQ/KV data, jsonl/text files, ACLSum, hub mapping."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ctxcompress.data import (
    DataError,
    QAExample,
    SummarizationExample,
    TextDocument,
    iter_texts,
    load_qa,
    load_summarization,
    load_texts,
    shared_data_dir,
    shuffled,
)
from ctxcompress.data import hub as hub_mod
from ctxcompress.errors import CtxCompressError
from ctxcompress.normalization import normalize_answer


def _shared_or_skip() -> Path:
    try:
        path = shared_data_dir()
    except DataError as e:
        pytest.skip(f"shared data folder (../shared/data) not available: {e}")
    if not (path / "nq-open-oracle.jsonl.gz").is_file():
        pytest.skip(f"{path}/nq-open-oracle.jsonl.gz not available")
    return path


@pytest.fixture
def shared() -> Path:
    return _shared_or_skip()


# ---------------------------------------------------------------------------- basics


def test_records_and_error_types():
    a = QAExample("c", "q", ("x",), "1", meta={"a": 1})
    b = QAExample("c", "q", ("x",), "1", meta={"b": 2})
    assert a == b and hash(a) == hash(b)  # meta takes no part in equality
    assert TextDocument("t", "1").meta == {}
    assert issubclass(DataError, CtxCompressError) and issubclass(DataError, ValueError)


def test_shuffled_is_deterministic():
    items = list(range(50))
    assert shuffled(items, 0) == shuffled(items, 0)
    assert shuffled(items, 0) != shuffled(items, 1)
    assert sorted(shuffled(items, 3)) == items and items == list(range(50))  # a copy
    # Pinned: random.Random(seed).shuffle, identical on every platform and run.
    assert shuffled(list(range(10)), 0) == [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]
    with pytest.raises(DataError, match="seed"):
        shuffled(items, "0")  # type: ignore[arg-type]


def test_unknown_spec_prefix_and_option():
    with pytest.raises(DataError, match=r"unknown data spec.*known prefixes"):
        load_qa("trivia:train")
    with pytest.raises(DataError, match="unknown data spec"):
        load_texts("nonexistent-file.bin")
    with pytest.raises(DataError, match="load_texts or load_summarization"):
        load_qa("aclsum:train")
    with pytest.raises(DataError, match="load_qa"):
        load_texts("kv-retrieval:test")
    with pytest.raises(DataError, match="non-empty string"):
        load_qa("")


def test_unknown_option_and_bad_limit(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"context": "c", "question": "q", "answers": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"unknown option\(s\) contxt; known: fields"):
        load_qa(f"jsonl:{path}", contxt="x")
    with pytest.raises(DataError, match="limit"):
        load_qa(f"jsonl:{path}", limit=-1)
    with pytest.raises(DataError, match="seed"):
        load_qa(f"jsonl:{path}", seed=1.5)


def test_shared_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXCOMPRESS_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    with pytest.raises(DataError, match=r"nq-open-oracle.jsonl.gz: not found"):
        load_qa("nq-oracle:dev")
    monkeypatch.setenv("CTXCOMPRESS_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="CTXCOMPRESS_DATA"):
        shared_data_dir()


# ---------------------------------------------------------------------------- nq-oracle


def test_nq_split_sizes(shared):
    splits = {s: load_qa(f"nq-oracle:{s}") for s in ("train", "dev", "test", "all")}
    assert {s: len(v) for s, v in splits.items()} == {
        "train": 2123,
        "dev": 266,
        "test": 266,
        "all": 2655,
    }
    ids = {s: {e.id for e in v} for s, v in splits.items()}
    assert ids["train"] | ids["dev"] | ids["test"] == ids["all"]
    assert not (ids["train"] & ids["dev"] or ids["train"] & ids["test"] or ids["dev"] & ids["test"])
    assert all(e.meta["index"] % 10 == 0 for e in splits["test"])
    assert all(e.meta["index"] % 10 == 1 for e in splits["dev"])
    # Count the file's lines directly, independently of the loader.
    with gzip.open(shared / "nq-open-oracle.jsonl.gz", "rt") as f:
        n = sum(1 for line in f if line.strip())
    assert n == 2655


def test_nq_records(shared):
    ex = load_qa("nq-oracle:test", limit=3)
    assert [e.meta["index"] for e in ex] == [0, 10, 20]  # file order without a seed
    first = ex[0]
    assert first.question == "who got the first nobel prize in physics"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    title, _, body = first.context.partition("\n")
    assert title == first.meta["title"] == "List of Nobel laureates in Physics"
    assert "Wilhelm Conrad Röntgen" in body
    assert first.meta["gold_position"] == 0 and first.meta["num_passages"] == 1
    untitled = load_qa("nq-oracle:test", limit=1, title=False)[0]
    assert untitled.context == body
    long = load_qa("nq-oracle:test", limit=1, context="long_answer")[0]
    assert long.context.startswith(title + "\n") and len(long.context) > len(first.context)
    with pytest.raises(DataError, match="context="):
        load_qa("nq-oracle:test", context="paragraph")
    with pytest.raises(DataError, match="unknown split"):
        load_qa("nq-oracle:validation")
    docs = load_texts("nq-oracle:dev", limit=2)
    assert docs[0].text == load_qa("nq-oracle:dev", limit=1)[0].context


def test_nq_seeded_order(shared):
    a = [e.id for e in load_qa("nq-oracle:dev", seed=1)]
    assert a == [e.id for e in load_qa("nq-oracle:dev", seed=1)]
    assert a != [e.id for e in load_qa("nq-oracle:dev", seed=2)]
    assert sorted(a) == sorted(e.id for e in load_qa("nq-oracle:dev"))
    assert [e.id for e in load_qa("nq-oracle:dev", seed=1, limit=5)] == a[:5]


@pytest.mark.parametrize("k", [1, 4, 9])
def test_nq_distractors(shared, k):
    gold = {e.id: e for e in load_qa("nq-oracle:dev")}
    examples = load_qa("nq-oracle:dev", num_distractors=k, seed=7, limit=40)
    positions = set()
    for ex in examples:
        passages = ex.context.split("\n\n")
        assert len(passages) == ex.meta["num_passages"] == k + 1
        pos = ex.meta["gold_position"]
        positions.add(pos)
        assert passages[pos] == gold[ex.id].context
        ids = ex.meta["passage_ids"]
        assert ids[pos] == ex.id and len(set(ids)) == k + 1
        for j, (pid, passage) in enumerate(zip(ids, passages, strict=True)):
            assert pid in gold  # distractors come from the same split
            assert passage == gold[pid].context
            if j != pos:
                assert passage != gold[ex.id].context
                norm = f" {normalize_answer(passage)} "
                assert not any(f" {normalize_answer(a)} " in norm for a in ex.answers)
    assert len(positions) > 1  # the position is drawn, not fixed


def test_nq_distractors_deterministic(shared):
    a = load_qa("nq-oracle:train", num_distractors=5, seed=3)
    b = load_qa("nq-oracle:train", num_distractors=5, seed=3)
    assert [e.context for e in a] == [e.context for e in b]
    c = load_qa("nq-oracle:train", num_distractors=5, seed=4)
    assert [e.context for e in a] != [e.context for e in c]
    # An item's context does not depend on limit or on which other items are loaded.
    by_id = {e.id: e.context for e in a}
    assert all(
        by_id[e.id] == e.context
        for e in load_qa("nq-oracle:train", num_distractors=5, seed=3, limit=7)
    )
    # distractor_seed fixes the contexts independently of the shuffling seed.
    d1 = {
        e.id: e.context
        for e in load_qa("nq-oracle:test", num_distractors=2, seed=1, distractor_seed=0)
    }
    d2 = {
        e.id: e.context
        for e in load_qa("nq-oracle:test", num_distractors=2, seed=2, distractor_seed=0)
    }
    assert d1 == d2


def test_nq_gold_position_option(shared):
    for pos in (0, 3, 5):
        for ex in load_qa("nq-oracle:test", num_distractors=5, gold_position=pos, limit=5):
            assert ex.meta["gold_position"] == pos
            assert ex.context.split("\n\n")[pos].startswith(ex.meta["title"] + "\n")
    with pytest.raises(DataError, match="gold_position"):
        load_qa("nq-oracle:test", num_distractors=2, gold_position=3)
    with pytest.raises(DataError, match="num_distractors"):
        load_qa("nq-oracle:test", num_distractors=266)
    with pytest.raises(DataError, match="num_distractors"):
        load_qa("nq-oracle:test", num_distractors=-1)


def test_nq_all_split_distractors_stay_in_split(shared):
    split_of = {e.id: e.meta["split"] for e in load_qa("nq-oracle:all")}
    for ex in load_qa("nq-oracle:all", num_distractors=3, seed=0, limit=30):
        assert {split_of[i] for i in ex.meta["passage_ids"]} == {ex.meta["split"]}


def test_kv_retrieval(shared):
    if not (shared / "kv-retrieval-75_keys.jsonl.gz").is_file():
        pytest.skip("kv-retrieval-75_keys.jsonl.gz not in the shared data folder")
    ex = load_qa("kv-retrieval:test", limit=3)
    assert len(load_qa("kv-retrieval:all")) == 500 and len(load_qa("kv-retrieval:test")) == 50
    for e in ex:
        records = json.loads(e.context.removeprefix("JSON data:\n"))
        assert len(records) == e.meta["num_records"] == 75
        key = e.question.split('"')[1]
        assert records[key] == e.answers[0]
        assert list(records).index(key) == e.meta["gold_position"]


# ---------------------------------------------------------------------------- jsonl


def _write_jsonl(path: Path, lines: list) -> Path:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_qa(tmp_path):
    path = _write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"context": "Paris is in France.", "question": "Where?", "answers": ["France"]},
            "",  # blank lines are allowed and still counted
            {"context": "c2", "question": "q2", "answer": "a2", "id": 7, "tag": "x"},
        ],
    )
    ex = load_qa(f"jsonl:{path}")
    assert [e.answers for e in ex] == [("France",), ("a2",)]
    assert [e.id for e in ex] == ["qa:1", "7"]
    assert ex[1].meta == {"path": str(path), "line": 3, "tag": "x"}
    assert load_qa(str(path)) == ex  # a bare .jsonl path means jsonl:


def test_jsonl_gz_and_field_mapping(tmp_path):
    path = _write_jsonl(
        tmp_path / "qa.jsonl.gz",
        [{"passage": "p", "q": "why?", "gold": {"short": ["because"]}}],
    )
    ex = load_qa(
        f"jsonl:{path}", fields={"context": "passage", "question": "q", "answers": "gold.short"}
    )
    assert ex == [QAExample("p", "why?", ("because",), "qa:1")]
    with pytest.raises(DataError, match="unknown key"):
        load_qa(f"jsonl:{path}", fields={"contxt": "passage"})


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    good = {"context": "c", "question": "q", "answers": ["a"]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, good, '{"context": "c", "question": '])
    with pytest.raises(DataError, match=rf"^{path}:3: not valid JSON"):
        load_qa(f"jsonl:{path}")
    path = _write_jsonl(tmp_path / "list.jsonl", [good, "[1, 2]"])
    with pytest.raises(DataError, match=rf"^{path}:2: expected a JSON object"):
        load_qa(f"jsonl:{path}")


def test_jsonl_missing_and_ill_typed_fields(tmp_path):
    good = {"context": "c", "question": "q", "answers": ["a"]}
    path = _write_jsonl(tmp_path / "m.jsonl", [good, {"context": "c", "answers": ["a"]}])
    with pytest.raises(DataError, match=rf"^{path}:2: missing field 'question'"):
        load_qa(f"jsonl:{path}")
    path = _write_jsonl(tmp_path / "t.jsonl", [{**good, "answers": [1, 2]}])
    with pytest.raises(DataError, match=rf"^{path}:1: field 'answers'.*list of strings"):
        load_qa(f"jsonl:{path}")
    path = _write_jsonl(tmp_path / "e.jsonl", [{**good, "answers": []}])
    with pytest.raises(DataError, match=rf"^{path}:1: .*empty"):
        load_qa(f"jsonl:{path}")
    path = _write_jsonl(tmp_path / "c.jsonl", [{**good, "context": None}])
    with pytest.raises(DataError, match=rf"^{path}:1: field 'context'.*must be a string"):
        load_qa(f"jsonl:{path}")
    with pytest.raises(DataError, match="no such file"):
        load_qa(f"jsonl:{tmp_path / 'absent.jsonl'}")


def test_jsonl_texts_and_summaries(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"content": "two"}])
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'text'"):
        load_texts(f"jsonl:{path}")
    path = _write_jsonl(tmp_path / "t.jsonl", [{"content": "one", "id": "a"}])
    assert load_texts(f"jsonl:{path}", fields={"text": "content"}) == [TextDocument("one", "a")]
    path = _write_jsonl(tmp_path / "s.jsonl", [{"document": "d", "summary": "s"}])
    assert load_summarization(f"jsonl:{path}") == [SummarizationExample("d", "s", "", "s:1")]


def test_jsonl_seed_and_limit(tmp_path):
    rows = [{"context": f"c{i}", "question": "q", "answers": ["a"]} for i in range(30)]
    path = _write_jsonl(tmp_path / "many.jsonl", rows)
    assert [e.context for e in load_qa(f"jsonl:{path}", limit=3)] == ["c0", "c1", "c2"]
    a = [e.context for e in load_qa(f"jsonl:{path}", seed=5)]
    assert a == [f"c{i}" for i in shuffled(list(range(30)), 5)]
    assert [e.context for e in load_qa(f"jsonl:{path}", seed=5, limit=4)] == a[:4]


# ---------------------------------------------------------------------------- text


def test_text_file_blocks_and_whole(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc\nline two\n\n\n  \nSecond doc\n\nThird\n", encoding="utf-8")
    docs = load_texts(f"text:{path}")
    assert [d.text for d in docs] == ["First doc\nline two", "Second doc", "Third"]
    assert [d.meta["line"] for d in docs] == [1, 6, 8]
    whole = load_texts(f"text:{path}", mode="file")
    assert len(whole) == 1 and whole[0].text.startswith("First doc") and whole[0].id == "corpus"
    assert load_texts(str(path)) == docs  # a bare .txt path means text:
    with pytest.raises(DataError, match="mode="):
        load_texts(f"text:{path}", mode="lines")


def test_text_folder(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n\nsecond block", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("sea")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    docs = load_texts(f"text:{tmp_path}")
    assert [(d.id, d.text) for d in docs] == [
        ("a", "ay"),
        ("b", "bee\n\nsecond block"),
        ("c", "sea"),
    ]
    assert len(load_texts(f"text:{tmp_path}", mode="blocks")) == 4
    assert [d.id for d in iter_texts(f"text:{tmp_path}", limit=2)] == ["a", "b"]
    (tmp_path / "d.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty file"):
        load_texts(f"text:{tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        load_texts(f"text:{empty}")
    with pytest.raises(DataError, match="no such file"):
        load_texts(f"text:{tmp_path / 'absent.txt'}")


# ---------------------------------------------------------------------------- aclsum


def test_aclsum_summarization():
    pytest.importorskip("aclsum", reason="the PyPI package 'aclsum' is not installed")
    sizes = {s: len(load_summarization(f"aclsum:{s}")) for s in ("train", "validation", "test")}
    assert sizes == {"train": 300, "validation": 150, "test": 300}  # 100/50/100 papers x 3
    ex = load_summarization("aclsum:validation", limit=6)
    assert [e.aspect for e in ex] == ["challenge", "approach", "outcome"] * 2
    assert ex[0].id == f"{ex[0].meta['paper_id']}:challenge"
    assert ex[0].document == ex[1].document and ex[0].document != ex[3].document
    assert all(e.summary.strip() and e.document.startswith(e.meta["title"]) for e in ex)
    assert "\n\nIntroduction\n" in ex[0].document and " , " not in ex[0].document
    only = load_summarization("aclsum:test", aspects="outcome", limit=4)
    assert {e.aspect for e in only} == {"outcome"}
    assert load_summarization("aclsum:val", limit=3) == ex[:3]
    with pytest.raises(DataError, match="aspects"):
        load_summarization("aclsum:test", aspects=["results"])
    with pytest.raises(DataError, match="unknown split"):
        load_summarization("aclsum:dev2")


def test_aclsum_texts():
    pytest.importorskip("aclsum", reason="the PyPI package 'aclsum' is not installed")
    docs = load_texts("aclsum:test", limit=3)
    assert len(docs) == 3 and len(load_texts("aclsum:train")) == 100
    for d in docs:
        assert d.text.startswith(d.meta["title"] + "\n\nAbstract\n")
        assert "Introduction\n" in d.text and len(d.text.split()) > 1000
    sections = load_texts("aclsum:test", limit=3, source="sections")
    assert all(len(s.text) < len(d.text) for s, d in zip(sections, docs, strict=True))
    assert [d.id for d in load_texts("aclsum:test", seed=1, limit=3)] != [d.id for d in docs]


# ---------------------------------------------------------------------------- hub

MRQA_ROWS = {
    "subset": ["SQuAD", "NewsQA", "SQuAD", "HotpotQA"],
    "context": ["ctx a", "ctx b", "ctx c", "ctx d"],
    "qid": ["q0", "q1", "q2", "q3"],
    "question": ["qa?", "qb?", "qc?", "qd?"],
    "answers": [["A", "a"], ["B"], ["C"], ["D"]],
    "context_tokens": [{"tokens": ["ctx"], "offsets": [0]}] * 4,
}


@pytest.fixture
def datasets():
    return pytest.importorskip("datasets", reason="the 'datasets' package is not installed")


def test_hub_mrqa_mapping(datasets):
    ds = datasets.Dataset.from_dict(MRQA_ROWS)
    ex = hub_mod.qa_examples_from_dataset(ds, "mrqa", "validation")
    assert ex[0] == QAExample("ctx a", "qa?", ("A", "a"), "q0")
    assert [e.meta["subset"] for e in ex] == MRQA_ROWS["subset"]
    assert "context_tokens" not in ex[0].meta
    squad = hub_mod.qa_examples_from_dataset(ds, "mrqa", "validation", subsets=["SQuAD"])
    assert [e.id for e in squad] == ["q0", "q2"]
    seeded = hub_mod.qa_examples_from_dataset(ds, "mrqa", "validation", seed=3, limit=2)
    assert [e.id for e in seeded] == [f"q{i}" for i in shuffled(list(range(4)), 3)[:2]]


def test_hub_text_mapping(datasets):
    ds = datasets.Dataset.from_dict(
        {"text": ["doc one", "doc two"], "meta": [{"redpajama_set_name": "RedPajamaC4"}] * 2}
    )
    docs = hub_mod.text_documents_from_dataset(ds, "slimpajama", "train")
    assert [d.text for d in docs] == ["doc one", "doc two"]
    assert docs[0].id == "slimpajama:train:0" and docs[0].meta["set"] == "RedPajamaC4"
    bad = datasets.Dataset.from_dict({"content": ["x"]})
    with pytest.raises(DataError, match=r"hub:slimpajama:train row 0: missing field 'text'"):
        hub_mod.text_documents_from_dataset(bad, "slimpajama", "train")


def test_hub_load_through_mocked_load_dataset(datasets, monkeypatch):
    calls = []

    def fake_load_dataset(repo, name=None, split=None, streaming=False):
        calls.append((repo, name, split, streaming))
        return datasets.Dataset.from_dict(MRQA_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = load_qa("hub:mrqa:test", limit=2)
    assert [e.id for e in ex] == ["q0", "q1"] and ex[0].meta["source"] == "hub:mrqa"
    assert calls == [("mrqa-workshop/mrqa", None, "test", False)]
    ex = load_qa("hub:someone/my-qa:dev", fields={"id": "qid"}, meta_fields=["subset"])
    assert calls[-1] == ("someone/my-qa", None, "dev", False) and ex[3].meta["subset"] == "HotpotQA"


def test_hub_errors_are_clear(datasets, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'mrqa-workshop/mrqa' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hub:mrqa: could not load 'mrqa-workshop/mrqa'.*network"):
        load_qa("hub:mrqa:validation")
    with pytest.raises(DataError, match="hub:fineweb.*"):
        list(iter_texts("hub:fineweb"))
    with pytest.raises(DataError, match="unknown data set"):
        load_qa("hub:squadv9:train")
    with pytest.raises(DataError, match="needs a split"):
        load_qa("hub:mrqa")
    with pytest.raises(DataError, match="unknown split"):
        load_qa("hub:mrqa:dev")
    with pytest.raises(DataError, match="load_texts"):
        load_qa("hub:slimpajama")
    with pytest.raises(DataError, match="needs limit"):
        load_texts("hub:fineweb")


def test_hub_streaming_texts(datasets, monkeypatch):
    rows = {
        "text": [f"web page {i}" for i in range(6)],
        "id": [f"<urn:{i}>" for i in range(6)],
        "url": [f"https://example.org/{i}" for i in range(6)],
        "dump": ["CC-MAIN-2024-10"] * 6,
    }

    def fake_load_dataset(repo, name=None, split=None, streaming=False):
        assert (repo, name, split, streaming) == (
            "HuggingFaceFW/fineweb",
            "sample-10BT",
            "train",
            True,
        )
        return datasets.Dataset.from_dict(rows).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = list(iter_texts("hub:fineweb"))
    assert [d.text for d in docs] == rows["text"] and docs[2].id == "<urn:2>"
    assert docs[0].meta == {
        "source": "hub:fineweb",
        "split": "train",
        "url": "https://example.org/0",
        "dump": "CC-MAIN-2024-10",
    }
    assert [d.id for d in load_texts("hub:fineweb", limit=2)] == ["<urn:0>", "<urn:1>"]
    a = [d.id for d in load_texts("hub:fineweb", limit=6, seed=1, shuffle_buffer=6)]
    assert sorted(a) == sorted(rows["id"])
    assert a == [d.id for d in load_texts("hub:fineweb", limit=6, seed=1, shuffle_buffer=6)]
