"""Loaders for a user's own files.

``jsonl:PATH`` — one JSON object per line (``.jsonl`` or ``.jsonl.gz``; blank lines allowed).

- QA (:func:`load_jsonl_qa`): fields ``context``, ``question``, ``answers`` (list of strings, or
  one string; a single-string ``answer`` field also works), optional ``id``.
- Texts (:func:`load_jsonl_texts`): field ``text``, optional ``id``.
- Summaries (:func:`load_jsonl_summaries`): ``document``, ``summary``, optional ``aspect``, ``id``.

``fields={"context": "passage", ...}`` maps other names (a dotted name such as
``"gold.long_answer"`` reaches into nested objects). Every other field of a record is kept in
``meta``, with ``path`` and ``line``. A line that is not a JSON object, or a record with a
missing or ill-typed field, raises ``DataError("PATH:LINE: ...")``: nothing is skipped.
Records without ``id`` get ``"<file stem>:<line>"``.

``text:PATH`` (texts only) — a ``.txt`` (or ``.txt.gz``) file, one document per block of lines
separated by blank lines (``mode="blocks"``, the default for a file) or the whole file
(``mode="file"``); or a folder of ``.txt``/``.txt.gz`` files, read in name order, one document
per file (``mode="file"``, the default for a folder; ``mode="blocks"`` splits each file). Text is
read as UTF-8; surrounding blank space of each document is stripped; an empty file is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ._common import (
    QA_FIELDS,
    SUMMARY_FIELDS,
    TEXT_FIELDS,
    iter_jsonl,
    qa_from_record,
    read_text,
    resolve_fields,
    summary_from_record,
    take,
    text_from_record,
)
from .records import DataError, QAExample, SummarizationExample, TextDocument


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return name


def _path(arg: str, prefix: str) -> Path:
    if not arg:
        raise DataError(f"{prefix}: give a path, e.g. '{prefix}:data/train.jsonl'")
    return Path(arg).expanduser()


def _load_jsonl(path: str, defaults, make, limit, seed, fields) -> list:
    """Records of a JSON-lines file built by ``make`` (each error names ``file:line``)."""
    p = _path(path, "jsonl")
    names = resolve_fields(fields, defaults)
    stem = _stem(p)
    items = [
        make(
            rec, names, where=f"{p}:{n}", default_id=f"{stem}:{n}", meta={"path": str(p), "line": n}
        )
        for n, rec in iter_jsonl(p)
    ]
    return take(items, limit, seed)


def load_jsonl_qa(
    path: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    fields: Mapping[str, str] | None = None,
) -> list[QAExample]:
    """QA examples from a JSON-lines file (see the module docstring)."""
    return _load_jsonl(path, QA_FIELDS, qa_from_record, limit, seed, fields)


def load_jsonl_texts(
    path: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    fields: Mapping[str, str] | None = None,
) -> list[TextDocument]:
    """Documents from a JSON-lines file with a ``text`` field (see the module docstring)."""
    return _load_jsonl(path, TEXT_FIELDS, text_from_record, limit, seed, fields)


def load_jsonl_summaries(
    path: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    fields: Mapping[str, str] | None = None,
) -> list[SummarizationExample]:
    """Summarisation examples from a JSON-lines file (``document``, ``summary``, ``aspect``)."""
    return _load_jsonl(path, SUMMARY_FIELDS, summary_from_record, limit, seed, fields)


TEXT_MODES = ("blocks", "file")


def _blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, block)`` for each run of non-blank lines."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if not current:
                start = n
            current.append(line)
        elif current:
            out.append((start, "\n".join(current).strip()))
            current = []
    if current:
        out.append((start, "\n".join(current).strip()))
    return out


def _read_documents(path: Path, mode: str) -> list[TextDocument]:
    text = read_text(path)
    stem = _stem(path)
    if mode == "file":
        if not text.strip():
            raise DataError(f"{path}: empty file (no text to load)")
        return [TextDocument(text=text.strip(), id=stem, meta={"path": str(path)})]
    return [
        TextDocument(text=block, id=f"{stem}:{line}", meta={"path": str(path), "line": line})
        for line, block in _blocks(text)
    ]


def load_text_files(
    path: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    mode: str | None = None,
) -> list[TextDocument]:
    """Documents from a ``.txt`` file or a folder of them (see the module docstring)."""
    p = _path(path, "text")
    if mode is not None and mode not in TEXT_MODES:
        raise DataError(f"text: mode={mode!r} is not one of {', '.join(TEXT_MODES)}")
    if p.is_dir():
        files = sorted(
            f for f in p.iterdir() if f.is_file() and f.name.endswith((".txt", ".txt.gz"))
        )
        if not files:
            raise DataError(f"{p}: no .txt files in this folder")
        docs = [d for f in files for d in _read_documents(f, mode or "file")]
    elif p.is_file():
        docs = _read_documents(p, mode or "blocks")
    else:
        raise DataError(f"{p}: no such file or folder")
    if not docs:
        raise DataError(f"{p}: no documents (the file is empty or blank)")
    return take(docs, limit, seed)
