"""Helpers shared by the loaders: locating shared data, deterministic order, reading (gzipped)
text and JSON lines with file:line errors, and mapping JSON-like records onto the record types."""

from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from .records import DataError, QAExample, SummarizationExample, TextDocument

T = TypeVar("T")

DATA_ENV = "CTXCOMPRESS_DATA"
"""Environment variable naming the shared data folder (overrides the ``../shared/data`` search)."""


def shared_data_dir() -> Path:
    """The folder with the project's shared data files (``nq-open-oracle.jsonl.gz``, ...).

    ``$CTXCOMPRESS_DATA`` if set; else the first existing of ``../shared/data`` relative to the
    repository root (found from this file's location) and ``../shared/data`` relative to the
    current directory.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"${DATA_ENV}={env!r} is not a folder; point it at the shared data")
        return path
    repo_root = Path(__file__).resolve().parents[3]  # src/ctxcompress/data -> repository root
    candidates = [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise DataError(
        f"shared data folder not found (tried {tried}); set ${DATA_ENV} to the folder that "
        "holds nq-open-oracle.jsonl.gz, or load your own file with a 'jsonl:PATH' spec"
    )


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """A shuffled copy of ``items``: ``random.Random(seed).shuffle``, the same on every run and
    platform. The permutation depends only on ``len(items)`` and ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an int, got {seed!r}")
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def check_limit_seed(limit: int | None, seed: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit must be a non-negative int or None, got {limit!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise DataError(f"seed must be an int or None, got {seed!r}")


def take(items: Sequence[T], limit: int | None, seed: int | None) -> list[T]:
    """Shuffle with ``seed`` (if given), then keep the first ``limit`` (if given)."""
    out = shuffled(items, seed) if seed is not None else list(items)
    return out if limit is None else out[:limit]


# ---------------------------------------------------------------------------- files


def open_text(path: Path) -> IO[str]:
    """Open a UTF-8 text file for reading, gunzipping ``*.gz``; a clear DataError if missing."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e})") from e


def read_text(path: Path) -> str:
    with open_text(path) as f:
        try:
            return f.read()
        except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from e


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSON-lines file.

    Line numbers are 1-based and count blank lines. Any line that is not a JSON object raises
    ``DataError("PATH:LINE: ...")``; nothing is skipped silently.
    """
    line_no = 0
    with open_text(path) as f:
        try:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})"
                    ) from e
                if not isinstance(obj, dict):
                    raise DataError(
                        f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}"
                    )
                yield line_no, obj
        except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}:{line_no + 1}: cannot read ({e})") from e


# ---------------------------------------------------------------------------- records

QA_FIELDS = ("context", "question", "answers", "id")
TEXT_FIELDS = ("text", "id")
SUMMARY_FIELDS = ("document", "summary", "aspect", "id")


def resolve_fields(fields: Mapping[str, str] | None, known: Sequence[str]) -> dict[str, str]:
    """Default field names, overridden by ``fields`` (``{"context": "passage", ...}``)."""
    names = {k: k for k in known}
    if fields is None:
        return names
    if not isinstance(fields, Mapping):
        raise DataError(f"fields must be a mapping like {{'context': 'passage'}}, got {fields!r}")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise DataError(f"fields: unknown key(s) {unknown}; known: {list(known)}")
    for key, value in fields.items():
        if not isinstance(value, str) or not value:
            raise DataError(f"fields[{key!r}] must be a field name, got {value!r}")
    names.update(fields)
    return names


MISSING = object()


def get_field(record: Mapping[str, Any], name: str) -> Any:
    """``record[name]``; a dotted name (``"gold.long_answer"``) walks nested objects when no key
    of that literal name exists. Returns ``MISSING`` if absent."""
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def _missing(where: str, role: str, name: str, record: Mapping[str, Any]) -> DataError:
    have = ", ".join(sorted(map(str, record))) or "none"
    return DataError(
        f"{where}: missing field {name!r} (the {role}); the record has: {have}. "
        f"Map another name with fields={{{role!r}: 'NAME'}}"
    )


def _string(where: str, role: str, name: str, record: Mapping[str, Any]) -> str:
    value = get_field(record, name)
    if value is MISSING:
        raise _missing(where, role, name, record)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {name!r} (the {role}) must be a string, got {type(value).__name__}"
        )
    return value


def _record_id(record: Mapping[str, Any], name: str, default: str, where: str) -> str:
    value = get_field(record, name)
    if value is MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {name!r} (the id) must be a string or int")
    return str(value)


def _extras(record: Mapping[str, Any], used: set[str], keep: Sequence[str] | None) -> dict:
    if keep is not None:
        return {k: record[k] for k in keep if k in record}
    return {k: v for k, v in record.items() if k not in used}


def qa_from_record(
    record: Mapping[str, Any],
    names: Mapping[str, str],
    *,
    where: str,
    default_id: str,
    meta: dict[str, Any] | None = None,
    keep: Sequence[str] | None = None,
) -> QAExample:
    """Map one JSON-like record onto a :class:`QAExample`.

    ``answers`` may be a list of strings or one string; if the answers field is absent and was
    not renamed, a single-string ``answer`` field is used. Empty answer lists are an error.
    Other fields of the record go into ``meta`` (only those in ``keep`` if given).
    """
    context = _string(where, "context", names["context"], record)
    question = _string(where, "question", names["question"], record)
    answers_name = names["answers"]
    value = get_field(record, answers_name)
    if value is MISSING and answers_name == "answers" and "answer" in record:
        answers_name = "answer"
        value = record["answer"]
    if value is MISSING:
        raise _missing(where, "answers", answers_name, record)
    if isinstance(value, str):
        answers: tuple[str, ...] = (value,)
    elif isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        answers = tuple(value)
    else:
        raise DataError(
            f"{where}: field {answers_name!r} (the answers) must be a list of strings or a "
            f"string, got {value!r:.80}"
        )
    if not answers:
        raise DataError(f"{where}: field {answers_name!r} (the answers) is empty")
    used = {names["context"], names["question"], answers_name, names["id"]}
    return QAExample(
        context=context,
        question=question,
        answers=answers,
        id=_record_id(record, names["id"], default_id, where),
        meta={**(meta or {}), **_extras(record, used, keep)},
    )


def text_from_record(
    record: Mapping[str, Any],
    names: Mapping[str, str],
    *,
    where: str,
    default_id: str,
    meta: dict[str, Any] | None = None,
    keep: Sequence[str] | None = None,
) -> TextDocument:
    """Map one JSON-like record onto a :class:`TextDocument` (field ``text``)."""
    text = _string(where, "text", names["text"], record)
    used = {names["text"], names["id"]}
    return TextDocument(
        text=text,
        id=_record_id(record, names["id"], default_id, where),
        meta={**(meta or {}), **_extras(record, used, keep)},
    )


def summary_from_record(
    record: Mapping[str, Any],
    names: Mapping[str, str],
    *,
    where: str,
    default_id: str,
    meta: dict[str, Any] | None = None,
) -> SummarizationExample:
    """Map one JSON-like record onto a :class:`SummarizationExample` (``aspect`` optional)."""
    document = _string(where, "document", names["document"], record)
    summary = _string(where, "summary", names["summary"], record)
    aspect = get_field(record, names["aspect"])
    if aspect is MISSING or aspect is None:
        aspect = ""
    elif not isinstance(aspect, str):
        raise DataError(f"{where}: field {names['aspect']!r} (the aspect) must be a string")
    used = {names["document"], names["summary"], names["aspect"], names["id"]}
    return SummarizationExample(
        document=document,
        summary=summary,
        aspect=aspect,
        id=_record_id(record, names["id"], default_id, where),
        meta={**(meta or {}), **_extras(record, used, None)},
    )


# ---------------------------------------------------------------------------- answers


def contains_answer(normalized_text: str, normalized_answers: Sequence[str]) -> bool:
    """Whether any (normalised, non-empty) answer occurs as whole words in the normalised text."""
    padded = f" {normalized_text} "
    return any(a and f" {a} " in padded for a in normalized_answers)
