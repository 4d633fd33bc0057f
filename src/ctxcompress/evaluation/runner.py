"""Running a compressor (or a hard baseline) over a dataset and scoring it.

Contexts are compressed in batches, every question is answered greedily against its own
context (batched), and each prediction is kept with its scores for inspection. QA is scored
with the standard SQuAD/MRQA EM and token F1 (max over gold answers) and with the SAC paper's
convention (raw EM and ROUGE-1 F against the first gold answer); summaries with ROUGE-1/2/L.
Results are grouped by ``meta["subset"]`` when the data has subsets (MRQA) and averaged.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..context import CompressedContext
from ..data.records import QAExample, SummarizationExample
from ..errors import InvalidInputError
from ..methods.base import Compressor
from . import metrics


@dataclass
class Prediction:
    id: str
    question: str
    prediction: str
    golds: list[str]
    scores: dict[str, float]
    subset: str | None = None
    compressed_length: int = 0
    original_length: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    """The example's metadata (e.g. ``gold_position`` in multi-passage contexts)."""


@dataclass
class EvalResult:
    """Every prediction plus aggregate scores (overall and per subset)."""

    method: str
    ratio: float
    task: str
    predictions: list[Prediction]
    overall: dict[str, float]
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the JSON (every prediction) next to a Markdown table (``.md``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        text = markdown_table([self])
        if self.subsets:
            text += "\n\nPer subset:\n\n" + subset_table(self)
        write_text_atomic(path.with_suffix(".md"), text + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        data = json.loads(Path(path).read_text())
        data["predictions"] = [Prediction(**p) for p in data["predictions"]]
        return cls(**data)


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate(
    comp: Compressor,
    examples: Sequence[QAExample | SummarizationExample],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    stop: Sequence[str] = ("\n",),
    summary_question: str | None = None,
    progress: bool = True,
    label: str | None = None,
    quantize: str | None = None,
    compose_passages: bool = False,
    ratio: int | None = None,
    build_contexts: Callable[[Sequence[str]], list[CompressedContext]] | None = None,
) -> EvalResult:
    """Compress each example's context, answer its question, score the answers.

    ``quantize="int8"`` answers from each context as it would come back from int8 storage
    (``CompressedContext.as_stored``): the quality cost of quantized storage.
    ``compose_passages=True`` splits each context into its passages (blocks separated by a
    blank line), compresses every distinct passage once (reused across examples) and
    answers from their composition (:meth:`Compressor.compose`), instead of compressing the
    joined text: the cost and the reuse of composition (``info["passages"]``).
    ``ratio``: compress at this ratio instead of the compressor's own (at least its trained
    one; e.g. a compressor trained with ``train.ratios``). ``build_contexts``: how a batch
    of context texts becomes compressed contexts (default ``comp.compress``), for measuring
    other ways of building them (benchmarks/building_blocks)."""
    if not examples:
        raise InvalidInputError("nothing to evaluate: the example list is empty")
    summarization = isinstance(examples[0], SummarizationExample)
    if any(isinstance(e, SummarizationExample) != summarization for e in examples):
        raise InvalidInputError("mixed QA and summarisation examples in one evaluation")
    predictions: list[Prediction] = []
    timing = {"compress": 0.0, "generate": 0.0}
    stored_bytes: list[int] = []  # each context as saved (quantized or not)
    passages = _PassageCache(comp) if compose_passages else None
    builder = passages.contexts if passages else build_contexts or comp.compress
    at_ratio = (lambda: comp.at_ratio(ratio)) if ratio is not None else contextlib.nullcontext

    def build(texts: Sequence[str]) -> list[CompressedContext]:
        with at_ratio():  # compression only: answering does not depend on the ratio
            return builder(texts)

    with at_ratio():
        ratio_in_effect = comp.ratio  # (an invalid ratio is refused here, before any work)
    bar = tqdm(
        total=len(examples),
        desc=f"eval {label or comp.method}",
        disable=not progress,
        dynamic_ncols=True,
    )
    for batch in _batches(list(examples), batch_size):
        if summarization:
            contexts = [e.document for e in batch]
            questions = [e.question(summary_question) for e in batch]
            golds = [[e.summary] for e in batch]
        else:
            contexts = [e.context for e in batch]
            questions = [e.question for e in batch]
            golds = [list(e.answers) for e in batch]
        start = time.perf_counter()
        compressed = build(contexts)
        timing["compress"] += time.perf_counter() - start
        stored_bytes += [c.stored_bytes(quantize) for c in compressed]
        compressed = [c.as_stored(quantize) for c in compressed]
        start = time.perf_counter()
        answers = comp.generate(
            compressed, questions, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size
        )
        timing["generate"] += time.perf_counter() - start
        for e, q, a, g, c in zip(batch, questions, answers, golds, compressed, strict=True):
            scores = metrics.rouge_scores(a, g[0]) if summarization else metrics.qa_scores(a, g)
            if not summarization and "references" in e.meta:  # RULER-style items
                refs, mode = e.meta["references"], e.meta.get("match", "all")
                scores["string_match"] = metrics.string_match(a, refs, mode)
            predictions.append(
                Prediction(
                    id=e.id,
                    question=q,
                    prediction=a,
                    golds=g,
                    scores=scores,
                    subset=e.meta.get("subset"),
                    compressed_length=c.compressed_length,
                    original_length=c.original_length,
                    meta=dict(e.meta),
                )
            )
        bar.update(len(batch))
    bar.close()
    overall = _average(predictions)
    subsets: dict[str, dict[str, float]] = {}
    names = sorted({p.subset for p in predictions if p.subset})
    for name in names:
        subsets[name] = _average([p for p in predictions if p.subset == name])
    if names:
        overall["macro_avg_over_subsets"] = {
            k: statistics.fmean(s[k] for s in subsets.values())
            for k in subsets[names[0]]
            if k != "n"
        }
    ratio = statistics.fmean(p.original_length / max(1, p.compressed_length) for p in predictions)
    return EvalResult(
        method=label or comp.method,
        ratio=ratio,
        task="summarization" if summarization else "qa",
        predictions=predictions,
        overall=overall,
        subsets=subsets,
        seconds=timing,
        info={
            "max_new_tokens": max_new_tokens,
            "compressor": comp.fingerprint,
            "config_ratio": comp.config.ratio,
            "ratio_in_effect": ratio_in_effect,
            "quantize": quantize,
            "mean_stored_bytes": statistics.fmean(stored_bytes),
            "passages": passages.counts if passages else None,
        },
    )


class _PassageCache:
    """Each distinct passage compressed once; contexts answered from their composition."""

    def __init__(self, comp: Compressor) -> None:
        self.comp, self.cache = comp, {}
        self.counts = {"used": 0, "compressed": 0}

    def contexts(self, texts: Sequence[str]) -> list[Any]:
        split = [[p for p in text.split("\n\n") if p.strip()] or [text] for text in texts]
        new = list(dict.fromkeys(p for parts in split for p in parts if p not in self.cache))
        if new:
            self.cache.update(zip(new, self.comp.compress(new), strict=True))
        self.counts["used"] += sum(len(parts) for parts in split)
        self.counts["compressed"] += len(new)
        return [self.comp.compose([self.cache[p] for p in parts]) for parts in split]


def _average(predictions: Sequence[Prediction]) -> dict[str, Any]:
    keys = predictions[0].scores.keys()
    out: dict[str, Any] = {k: statistics.fmean(p.scores[k] for p in predictions) for k in keys}
    out["n"] = len(predictions)
    out["compressed_length"] = statistics.fmean(p.compressed_length for p in predictions)
    out["original_length"] = statistics.fmean(p.original_length for p in predictions)
    return out


QA_COLUMNS = [
    ("em", "EM"),
    ("f1", "F1"),
    ("sac_em", "EM (SAC conv.)"),
    ("sac_f1", "F1 (SAC conv.)"),
]
SUMMARY_COLUMNS = [("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L")]


def markdown_table(results: Sequence[EvalResult]) -> str:
    """One row per result: scores in %, mean context and compressed lengths, ratio."""
    columns = SUMMARY_COLUMNS if results[0].task == "summarization" else QA_COLUMNS
    if all("string_match" in r.overall for r in results):
        columns = [*columns, ("string_match", "string match (RULER)")]
    head = ["system", *[c for _, c in columns], "L (tokens)", "C (tokens)", "ratio", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        o = r.overall
        cells = [
            r.method,
            *[f"{100 * o[k]:.1f}" for k, _ in columns],
            f"{o['original_length']:.0f}",
            f"{o['compressed_length']:.0f}",
            f"{r.ratio:.1f}x" if o["compressed_length"] > 0 else "-",  # nothing kept
            str(o["n"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(results: Sequence[EvalResult], key: str, metric: str = "f1") -> str:
    """``metric`` (in %) per value of ``meta[key]`` (e.g. ``"gold_position"``), one row per
    system; predictions without the key are left out, and ``n`` per value is shown."""
    values = sorted({p.meta[key] for r in results for p in r.predictions if key in p.meta})
    if not values:
        raise InvalidInputError(f"no prediction records {key!r} in its metadata")
    head = ["system", *[f"{key}={v}" for v in values]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.method]
        for v in values:
            chosen = [p.scores[metric] for p in r.predictions if p.meta.get(key) == v]
            cells.append(
                f"{100 * statistics.fmean(chosen):.1f} (n={len(chosen)})" if chosen else "-"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_tables(results: Sequence[EvalResult]) -> str:
    """:func:`markdown_table`, followed by F1 by gold-passage position when every prediction
    records one and the gold passage is not always at the same place (multi-passage
    contexts)."""
    text = markdown_table(results)
    predictions = [p for r in results for p in r.predictions]
    if all("gold_position" in p.meta for p in predictions) and (
        len({p.meta["gold_position"] for p in predictions}) > 1
    ):
        text += "\n\nF1 (%) by the gold passage's position in the context (0 = first):\n\n"
        text += breakdown_table(results, "gold_position")
    return text


def subset_table(result: EvalResult) -> str:
    """One row per subset (MRQA's six in-domain or out-of-domain sets) plus the macro average."""
    columns = SUMMARY_COLUMNS if result.task == "summarization" else QA_COLUMNS
    head = ["subset", *[c for _, c in columns], "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, scores in result.subsets.items():
        cells = [name, *[f"{100 * scores[k]:.1f}" for k, _ in columns], str(scores["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    macro = result.overall.get("macro_avg_over_subsets")
    if macro:
        cells = ["macro average", *[f"{100 * macro[k]:.1f}" for k, _ in columns], ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
