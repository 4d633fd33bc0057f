"""Hugging Face Hub data sets through ``datasets.load_dataset`` (needs ``pip install datasets``
and network access or a filled local cache).

Named data sets (``hub:NAME[:SPLIT]``):

- ``hub:mrqa:train|validation|test`` — ``mrqa-workshop/mrqa`` (QA). ``train`` = the six in-domain
  training sets, ``validation`` = their six dev sets (SQuAD, NewsQA, TriviaQA-web, SearchQA,
  HotpotQA, NaturalQuestionsShort), ``test`` = the six out-of-domain sets (BioASQ, DROP, DuoRC,
  RACE, RelationExtraction, TextbookQA). Fields ``context``, ``question``, ``answers``, id from
  ``qid``; ``meta["subset"]`` names the source set; ``subsets=[...]`` keeps only some.
  Contexts keep MRQA's markers (``[PAR]``, ``[DOC]``, ``[TLE]``, ``[SEP]``) as the set has them.
- ``hub:slimpajama[:train|validation|test]`` — ``DKYoon/SlimPajama-6B`` (text, default split
  train); ``meta["set"]`` is the RedPajama source set.
- ``hub:fineweb[:train]`` — ``HuggingFaceFW/fineweb``, config ``sample-10BT`` (text), streamed by
  default (``streaming=False`` downloads it); ``meta`` has ``url`` and ``dump``.

Any other repository: ``hub:OWNER/NAME[:SPLIT]`` (split default ``train``) with options
``config=``, ``fields=`` (as for ``jsonl:``), ``meta_fields=[...]`` (columns copied into
``meta``), ``subsets=[...]`` (filter on a ``subset`` column), ``streaming=``.

Order: without ``seed``, the data set's order; with ``seed``, a :func:`shuffled` permutation of
the row indices (so ``limit`` rows are read, not the whole set). Streamed sets shuffle with a
buffer instead (``datasets.IterableDataset.shuffle(seed, buffer_size=shuffle_buffer)``) and
need ``limit`` in ``load_*`` (or use ``iter_texts``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._common import (
    MISSING,
    QA_FIELDS,
    TEXT_FIELDS,
    get_field,
    qa_from_record,
    resolve_fields,
    take,
    text_from_record,
)
from .records import DataError, QAExample, TextDocument


@dataclass(frozen=True)
class HubPreset:
    """A named hub data set: where it lives and how its rows map onto records."""

    repo: str
    kind: str  # "qa" or "text"
    splits: tuple[str, ...]
    default_split: str | None = None
    config: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)  # meta key -> (dotted) column
    streaming: bool = False


PRESETS: dict[str, HubPreset] = {
    "mrqa": HubPreset(
        repo="mrqa-workshop/mrqa",
        kind="qa",
        splits=("train", "validation", "test"),
        fields={"id": "qid"},
        meta={"subset": "subset"},
    ),
    "slimpajama": HubPreset(
        repo="DKYoon/SlimPajama-6B",
        kind="text",
        splits=("train", "validation", "test"),
        default_split="train",
        meta={"set": "meta.redpajama_set_name"},
    ),
    "fineweb": HubPreset(
        repo="HuggingFaceFW/fineweb",
        kind="text",
        splits=("train",),
        default_split="train",
        config="sample-10BT",
        meta={"url": "url", "dump": "dump"},
        streaming=True,
    ),
}


def _preset(arg: str, kind: str, config: str | None) -> tuple[str, HubPreset, str]:
    """Resolve ``NAME[:SPLIT]`` to (name, preset, split)."""
    name, _, split = arg.partition(":")
    if not name:
        raise DataError("hub: give a data set, e.g. 'hub:mrqa:validation' or 'hub:OWNER/NAME'")
    if name in PRESETS:
        preset = PRESETS[name]
        if config is not None:
            preset = HubPreset(**{**preset.__dict__, "config": config})
    elif "/" in name:
        preset = HubPreset(repo=name, kind=kind, splits=(), default_split="train", config=config)
    else:
        raise DataError(
            f"hub:{name}: unknown data set; known: {', '.join(PRESETS)}, "
            "or a hub repository id 'hub:OWNER/NAME[:SPLIT]'"
        )
    if preset.kind != kind:
        other = "load_texts" if preset.kind == "text" else "load_qa"
        raise DataError(f"hub:{name} is a {preset.kind} data set; load it with {other}")
    split = split or preset.default_split or ""
    if not split:
        raise DataError(f"hub:{name} needs a split: hub:{name}:" + "|".join(preset.splits))
    if preset.splits and split not in preset.splits:
        raise DataError(
            f"hub:{name}:{split}: unknown split; use hub:{name}:" + "|".join(preset.splits)
        )
    return name, preset, split


def _load_dataset(preset: HubPreset, name: str, split: str, streaming: bool) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"hub:{name}: needs the 'datasets' package: pip install datasets "
            "(or pip install 'ctxcompress[train]')"
        ) from e
    try:
        return datasets.load_dataset(
            preset.repo, name=preset.config, split=split, streaming=streaming
        )
    except Exception as e:
        raise DataError(
            f"hub:{name}: could not load {preset.repo!r} (split {split!r}) with "
            f"datasets.load_dataset: {type(e).__name__}: {e}. Hub data sets need network access "
            "or a local Hugging Face cache; offline, use a nq-oracle:, jsonl:, text: or aclsum: "
            "spec"
        ) from e


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _rows(
    ds: Any,
    *,
    columns: Sequence[str],
    subsets: Sequence[str] | None,
    limit: int | None,
    seed: int | None,
    shuffle_buffer: int,
    where: str,
) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(row index, row) in the order asked; reads only the rows (and columns) it needs."""
    names = getattr(ds, "column_names", None)
    if subsets is not None:
        columns = [*columns, "subset"]
    if names:
        present = sorted({_top(c) for c in columns} & set(names))
        if present and len(present) < len(names):
            ds = ds.select_columns(present)
    if subsets is not None:
        wanted = {subsets} if isinstance(subsets, str) else set(subsets)
        if names and "subset" not in names:
            raise DataError(f"{where}: subsets= needs a 'subset' column")
    streamed = not hasattr(ds, "__len__")
    try:
        if streamed:
            if subsets is not None:
                ds = ds.filter(lambda row: row["subset"] in wanted)
            if seed is not None:
                ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
            if limit is not None:
                ds = ds.take(limit)
            yield from enumerate(ds)
            return
        if subsets is not None:
            indices = [i for i, s in enumerate(ds["subset"]) if s in wanted]
        else:
            indices = list(range(len(ds)))
        chosen = take(indices, limit, seed)
        if chosen != indices or len(chosen) != len(ds):
            ds = ds.select(chosen)
        yield from zip(chosen, ds, strict=True)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where}: reading rows failed: {type(e).__name__}: {e}") from e


def _meta_of(row: Mapping[str, Any], meta: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for key, column in meta.items():
        value = get_field(row, column)
        if value is not MISSING:
            out[key] = value
    return out


def records_from_dataset(
    ds: Any,
    make: Callable[..., Any],
    known: Sequence[str],
    *,
    name: str,
    split: str,
    preset: HubPreset | None = None,
    limit: int | None = None,
    seed: int | None = None,
    fields: Mapping[str, str] | None = None,
    meta_fields: Sequence[str] | None = None,
    subsets: Sequence[str] | None = None,
    shuffle_buffer: int = 10_000,
) -> Iterator[Any]:
    """Map the rows of a ``datasets`` data set onto records (QA via ``qa_from_record``, texts
    via ``text_from_record``); works on a local ``Dataset.from_dict`` as on a hub download."""
    preset = preset or PRESETS.get(name) or HubPreset(repo=name, kind="", splits=())
    names = resolve_fields({**preset.fields, **(fields or {})}, known)
    meta_map = {**preset.meta, **{c: c for c in meta_fields or ()}}
    where = f"hub:{name}:{split}"
    columns = [*names.values(), *meta_map.values()]
    if make is qa_from_record and "answers" not in (fields or {}):
        columns.append("answer")  # the single-string fallback
    for index, row in _rows(
        ds,
        columns=columns,
        subsets=subsets,
        limit=limit,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        where=where,
    ):
        yield make(
            row,
            names,
            where=f"{where} row {index}",
            default_id=f"{name}:{split}:{index}",
            meta={"source": f"hub:{name}", "split": split, **_meta_of(row, meta_map)},
            keep=(),
        )


def qa_examples_from_dataset(ds: Any, name: str, split: str, **options: Any) -> list[QAExample]:
    """QA examples from a ``datasets`` data set (``name`` picks a preset's field mapping)."""
    return list(
        records_from_dataset(ds, qa_from_record, QA_FIELDS, name=name, split=split, **options)
    )


def text_documents_from_dataset(
    ds: Any, name: str, split: str, **options: Any
) -> list[TextDocument]:
    """Documents from a ``datasets`` data set (field ``text`` unless mapped)."""
    return list(
        records_from_dataset(ds, text_from_record, TEXT_FIELDS, name=name, split=split, **options)
    )


def load_hub_qa(
    arg: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    config: str | None = None,
    fields: Mapping[str, str] | None = None,
    meta_fields: Sequence[str] | None = None,
    subsets: Sequence[str] | None = None,
    streaming: bool | None = None,
    shuffle_buffer: int = 10_000,
) -> list[QAExample]:
    """``hub:NAME[:SPLIT]`` as QA examples (see the module docstring)."""
    name, preset, split = _preset(arg, "qa", config)
    streaming = preset.streaming if streaming is None else bool(streaming)
    if streaming and limit is None:
        raise DataError(f"hub:{name}: a streamed data set needs limit=N")
    ds = _load_dataset(preset, name, split, streaming)
    return list(
        records_from_dataset(
            ds,
            qa_from_record,
            QA_FIELDS,
            name=name,
            split=split,
            preset=preset,
            limit=limit,
            seed=seed,
            fields=fields,
            meta_fields=meta_fields,
            subsets=subsets,
            shuffle_buffer=shuffle_buffer,
        )
    )


def iter_hub_texts(
    arg: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    config: str | None = None,
    fields: Mapping[str, str] | None = None,
    meta_fields: Sequence[str] | None = None,
    streaming: bool | None = None,
    shuffle_buffer: int = 10_000,
) -> Iterator[TextDocument]:
    """``hub:NAME[:SPLIT]`` documents one at a time (streams where the data set streams)."""
    name, preset, split = _preset(arg, "text", config)
    streaming = preset.streaming if streaming is None else bool(streaming)
    ds = _load_dataset(preset, name, split, streaming)  # eagerly: errors surface at the call
    return records_from_dataset(
        ds,
        text_from_record,
        TEXT_FIELDS,
        name=name,
        split=split,
        preset=preset,
        limit=limit,
        seed=seed,
        fields=fields,
        meta_fields=meta_fields,
        shuffle_buffer=shuffle_buffer,
    )


def load_hub_texts(
    arg: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    config: str | None = None,
    fields: Mapping[str, str] | None = None,
    meta_fields: Sequence[str] | None = None,
    streaming: bool | None = None,
    shuffle_buffer: int = 10_000,
) -> list[TextDocument]:
    """``hub:NAME[:SPLIT]`` as a list of documents (a streamed set needs ``limit``)."""
    name, preset, _ = _preset(arg, "text", config)
    if (preset.streaming if streaming is None else streaming) and limit is None:
        raise DataError(
            f"hub:{name}: a streamed data set needs limit=N (or iterate with iter_texts)"
        )
    return list(
        iter_hub_texts(
            arg,
            limit=limit,
            seed=seed,
            config=config,
            fields=fields,
            meta_fields=meta_fields,
            streaming=streaming,
            shuffle_buffer=shuffle_buffer,
        )
    )
