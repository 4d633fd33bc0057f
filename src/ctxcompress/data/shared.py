"""Loaders for the project's shared data files (``../shared/data``, see its README).

``nq-oracle:SPLIT`` — Natural Questions (open) with the gold Wikipedia passage of each question
(``nq-open-oracle.jsonl.gz``, 2,655 lines). Splits by 0-based line index ``i``:
**test** = ``i % 10 == 0`` (266), **dev** = ``i % 10 == 1`` (266), **train** = the rest (2,123);
``all`` = every line. Tune on dev, report on test.

Context (``context=``):

- ``"passage"`` (default): the gold passage ``ctxs[0].text`` (a ~100-word Wikipedia chunk, often
  cut mid-sentence), with the article title as its first line (``"Title\\ntext"``; ``title=False``
  drops the title line).
- ``"long_answer"``: ``nq_annotated_gold.long_answer``, the whole annotated paragraph (median
  ~80 words, up to ~1,600), with the title line likewise.

Surrounding whitespace of each passage is stripped (a few end in ``" \\n"``). ``answers`` is the
item's ``answers`` list (a superset of ``nq_annotated_gold.short_answers``).

Distractors (``num_distractors=k``): the passages (same ``context`` kind) of k other items of
the **same split**, the gold passage at ``gold_position`` (0-based, 0..k) — given, or drawn —
and all k+1 joined with ``"\\n\\n"``. Draws use ``random.Random`` seeded from
``(distractor_seed, item index)``, where ``distractor_seed`` defaults to ``seed`` or 0: the same
item gets the same context whatever ``limit`` and shuffling. A distractor is never the item
itself, never a passage identical to the gold one (49 passages occur more than once), and, with
``exclude_answer_passages=True`` (default), never contains one of the item's answers (SQuAD-
normalised, whole words), so the gold passage is the only one that answers the question.
``meta`` records ``gold_position``, ``num_passages``, ``passage_ids`` (item ids in order),
``split``, ``index`` (line index) and ``title``.

``kv-retrieval:SPLIT`` — the synthetic key-value retrieval set (``kv-retrieval-75_keys.jsonl.gz``,
500 lines of 75 UUID pairs): context ``"JSON data:\\n" + json.dumps(dict(records), indent=1)``,
question asks for the value of ``key``, answer ``value``; ``meta["gold_position"]`` is the index
of the key among the 75 records. Splits follow the same ``i % 10`` convention.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

from ..normalization import normalize_answer
from ._common import (
    contains_answer,
    iter_jsonl,
    shared_data_dir,
    take,
)
from .records import DataError, QAExample, TextDocument

NQ_FILE = "nq-open-oracle.jsonl.gz"
KV_FILE = "kv-retrieval-75_keys.jsonl.gz"
SPLITS = ("train", "dev", "test", "all")
NQ_CONTEXTS = ("passage", "long_answer")


def split_of(index: int) -> str:
    """The split of a 0-based line index: test (i % 10 == 0), dev (i % 10 == 1), else train."""
    return "test" if index % 10 == 0 else "dev" if index % 10 == 1 else "train"


def _check_split(split: str, spec: str) -> str:
    if split not in SPLITS:
        raise DataError(f"{spec}:{split!r}: unknown split; use {spec}:" + "|".join(SPLITS))
    return split


def _data_file(name: str) -> Path:
    path = shared_data_dir() / name
    if not path.is_file():
        raise DataError(f"{path}: not found in the shared data folder")
    return path


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, dict[str, Any]], ...]:
    return tuple(iter_jsonl(Path(path)))


def _read(path: Path) -> tuple[tuple[int, dict[str, Any]], ...]:
    st = path.stat()
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------- NQ oracle


def _str_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise DataError(f"{where}: {name} must be a non-empty list of strings or a string")


def _nq_item(line_no: int, row: dict[str, Any], path: Path, context: str, title: bool) -> dict:
    """Validate one NQ-oracle row and extract what the loaders need."""
    where = f"{path}:{line_no}"
    question = row.get("question")
    if not isinstance(question, str):
        raise DataError(f"{where}: 'question' must be a string")
    answers = _str_list(row.get("answers"), where, "'answers'")
    ctxs = row.get("ctxs")
    if isinstance(ctxs, dict):
        ctxs = [ctxs]
    if not isinstance(ctxs, list) or not ctxs or not all(isinstance(c, dict) for c in ctxs):
        raise DataError(f"{where}: 'ctxs' must be a non-empty list of passages")
    gold_ctx = next((c for c in ctxs if c.get("isgold")), ctxs[0])
    gold = row.get("nq_annotated_gold") or {}
    if context == "passage":
        body, head = gold_ctx.get("text"), gold_ctx.get("title", "")
        name = "ctxs[].text"
    else:
        body, head = gold.get("long_answer"), gold.get("title", gold_ctx.get("title", ""))
        name = "nq_annotated_gold.long_answer"
    if not isinstance(body, str) or not body.strip():
        raise DataError(f"{where}: {name} must be a non-empty string")
    if not isinstance(head, str):
        raise DataError(f"{where}: the passage title must be a string")
    body, head = body.strip(), head.strip()
    passage = f"{head}\n{body}" if title and head else body
    return {"question": question, "answers": answers, "passage": passage, "title": head}


@functools.lru_cache(maxsize=8)
def _nq_items(path: str, mtime_ns: int, context: str, title: bool) -> tuple[dict, ...]:
    rows = _read(Path(path))
    items = []
    for index, (line_no, row) in enumerate(rows):
        item = _nq_item(line_no, row, Path(path), context, title)
        item.update(index=index, id=f"nq-{index:04d}", split=split_of(index))
        items.append(item)
    return tuple(items)


def _nq_load(split: str, context: str, title: bool) -> list[dict]:
    _check_split(split, "nq-oracle")
    if context not in NQ_CONTEXTS:
        raise DataError(f"nq-oracle: context={context!r} is not one of {', '.join(NQ_CONTEXTS)}")
    path = _data_file(NQ_FILE)
    items = _nq_items(str(path), path.stat().st_mtime_ns, context, bool(title))
    return [it for it in items if split == "all" or it["split"] == split]


def _pick_distractors(
    item: dict,
    pool: list[dict],
    k: int,
    rng: random.Random,
    exclude_answers: bool,
    normalized: dict[int, str],
) -> list[dict]:
    """Draw k distinct usable distractors from ``pool`` by rejection sampling (deterministic)."""
    answers = [normalize_answer(a) for a in item["answers"]] if exclude_answers else []
    chosen: list[dict] = []
    seen = {item["index"]}
    usable_left = len(pool) - 1
    while len(chosen) < k:
        if usable_left <= 0:
            raise DataError(
                f"nq-oracle: only {len(chosen)} usable distractors for {item['id']} in its split "
                f"(asked for {k}); lower num_distractors or set exclude_answer_passages=False"
            )
        other = pool[rng.randrange(len(pool))]
        if other["index"] in seen:
            continue
        seen.add(other["index"])
        usable_left -= 1
        if other["passage"] == item["passage"]:
            continue
        if answers:
            norm = normalized.get(other["index"])
            if norm is None:
                norm = normalized[other["index"]] = normalize_answer(other["passage"])
            if contains_answer(norm, answers):
                continue
        chosen.append(other)
    return chosen


def _check_distractor_options(
    num_distractors: int, gold_position: int | None, pool_size: int
) -> None:
    if isinstance(num_distractors, bool) or not isinstance(num_distractors, int):
        raise DataError(f"nq-oracle: num_distractors must be an int, got {num_distractors!r}")
    if not 0 <= num_distractors <= pool_size - 1:
        raise DataError(
            f"nq-oracle: num_distractors={num_distractors} must be in 0..{pool_size - 1} "
            "(other items of the same split)"
        )
    if gold_position is not None and (
        isinstance(gold_position, bool)
        or not isinstance(gold_position, int)
        or not 0 <= gold_position <= num_distractors
    ):
        raise DataError(
            f"nq-oracle: gold_position={gold_position!r} must be an int in 0..{num_distractors}"
        )


def _nq_context(
    item: dict,
    pool: list[dict],
    num_distractors: int,
    gold_position: int | None,
    distractor_seed: int,
    exclude_answer_passages: bool,
    normalized: dict[int, str],
) -> tuple[str, dict[str, Any]]:
    """The (possibly multi-passage) context of one item and its meta."""
    rng = random.Random(f"nq-oracle/{distractor_seed}/{item['index']}")
    others = (
        _pick_distractors(item, pool, num_distractors, rng, exclude_answer_passages, normalized)
        if num_distractors
        else []
    )
    pos = gold_position if gold_position is not None else rng.randint(0, num_distractors)
    passages = [*others[:pos], item, *others[pos:]]
    meta = {
        "split": item["split"],
        "index": item["index"],
        "title": item["title"],
        "gold_position": pos,
        "num_passages": len(passages),
        "passage_ids": [p["id"] for p in passages],
    }
    return "\n\n".join(p["passage"] for p in passages), meta


def load_nq_oracle(
    split: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    context: str = "passage",
    title: bool = True,
    num_distractors: int = 0,
    gold_position: int | None = None,
    distractor_seed: int | None = None,
    exclude_answer_passages: bool = True,
) -> list[QAExample]:
    """``nq-oracle:SPLIT`` as QA examples (see the module docstring for every option)."""
    items = _nq_load(split, context, title)
    by_split: dict[str, list[dict]] = {}
    for it in items:  # distractors come from each item's own split, also for "all"
        by_split.setdefault(it["split"], []).append(it)
    _check_distractor_options(
        num_distractors, gold_position, min(len(p) for p in by_split.values())
    )
    if distractor_seed is None:
        distractor_seed = 0 if seed is None else seed
    normalized: dict[int, str] = {}
    out = []
    for it in take(items, limit, seed):
        ctx, meta = _nq_context(
            it,
            by_split[it["split"]],
            num_distractors,
            gold_position,
            distractor_seed,
            exclude_answer_passages,
            normalized,
        )
        out.append(
            QAExample(
                context=ctx,
                question=it["question"],
                answers=it["answers"],
                id=it["id"],
                meta={"source": "nq-oracle", **meta},
            )
        )
    return out


def load_nq_texts(
    split: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    context: str = "passage",
    title: bool = True,
) -> list[TextDocument]:
    """``nq-oracle:SPLIT`` as plain documents: each item's gold passage (or long answer)."""
    items = take(_nq_load(split, context, title), limit, seed)
    return [
        TextDocument(
            text=it["passage"],
            id=it["id"],
            meta={"source": "nq-oracle", "split": it["split"], "index": it["index"]},
        )
        for it in items
    ]


# ---------------------------------------------------------------------------- KV retrieval

KV_QUESTION = 'What is the value of the key "{key}" in the JSON data?'


def load_kv_retrieval(
    split: str, *, limit: int | None = None, seed: int | None = None
) -> list[QAExample]:
    """``kv-retrieval:SPLIT``: synthetic long-context key-value lookups (75 UUID pairs each)."""
    _check_split(split, "kv-retrieval")
    path = _data_file(KV_FILE)
    items = []
    for index, (line_no, row) in enumerate(_read(path)):
        if split != "all" and split_of(index) != split:
            continue
        where = f"{path}:{line_no}"
        records, key, value = row.get("ordered_kv_records"), row.get("key"), row.get("value")
        if not (
            isinstance(records, list)
            and all(isinstance(r, list) and len(r) == 2 for r in records)
            and isinstance(key, str)
            and isinstance(value, str)
        ):
            raise DataError(f"{where}: expected ordered_kv_records (list of pairs), key, value")
        keys = [r[0] for r in records]
        if key not in keys:
            raise DataError(f"{where}: the key is not among ordered_kv_records")
        context = "JSON data:\n" + json.dumps(dict(records), indent=1, ensure_ascii=False)
        meta = {
            "source": "kv-retrieval",
            "split": split_of(index),
            "index": index,
            "gold_position": keys.index(key),
            "num_records": len(records),
        }
        items.append(
            QAExample(
                context=context,
                question=KV_QUESTION.format(key=key),
                answers=(value,),
                id=f"kv-{index:04d}",
                meta=meta,
            )
        )
    return take(items, limit, seed)
