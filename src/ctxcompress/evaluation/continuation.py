"""Continuation NLL: the dense quality signal of a compressed context (issue 38, lever 4).

Held-out windows of a text stream (``training.objectives.text_stream_windows``) are cut where
continuation pretraining cuts them: the first ``context_fraction`` is compressed, and the
score is the mean negative log-likelihood (nats per token) of the rest given the compressed
context — the quantity the dense pretraining minimises, on every token (KV-Distill's signal),
so a learning curve is dense where QA F1 is sparse and noisy. Lower is better; the full
context is the floor a compressor approaches, head and tail truncation at the same budget the
cheap alternatives it must beat.

Every system reads a window the same way: the compressed context, then (after its ``[LM]``
opener, if it has one) the first continuation token; the loss covers the tokens after it. A
hard baseline (truncation, the full context) has no opener, so it must see one token before it
predicts: scoring that first token for the learned methods only would compare different
tokens. Windows are paired across systems (same ids), so differences carry paired bootstrap
intervals (:func:`paired_nll_difference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..methods import Compressor, build_compressor
from ..models import BaseModel
from ..training.objectives import TrainExample, continuation_example, text_stream_windows
from .significance import Interval, interval_of


@dataclass(frozen=True)
class ContinuationScore:
    """Per-window mean NLL (nats per token), in window order, with its mean and interval."""

    label: str
    window_nll: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.window_nll) / len(self.window_nll)

    def interval(self) -> Interval:
        return interval_of(self.window_nll)


def continuation_windows(
    comp: Compressor,
    texts: Iterable[str],
    *,
    size: int,
    limit: int,
    context_fraction: float = 0.5,
) -> list[TrainExample]:
    """The first ``limit`` windows of ``size`` tokens of the texts' stream, each cut into a
    compressed part (``context_fraction``) and a continuation without EOS."""
    if limit < 1:
        raise InvalidInputError(f"limit must be >= 1 window, got {limit}")
    windows = []
    for ids in text_stream_windows(comp, texts, size):
        example = continuation_example(
            comp, ids, min_tokens=2, max_tokens=size, context_fraction=context_fraction, eos=False
        )
        if example is not None:
            windows.append(example)
        if len(windows) == limit:
            break
    if not windows:
        raise InvalidInputError(f"the texts hold no window of {size} tokens: give more text")
    if short := sum(len(w.target_ids) < 2 for w in windows):
        raise InvalidInputError(
            f"{short} of {len(windows)} windows keep under 2 continuation tokens (one is read, "
            "the rest scored): use longer windows or a smaller context_fraction"
        )
    return windows


def continuation_nll(
    comp: Compressor, windows: Sequence[TrainExample], *, batch_size: int = 8, label: str = ""
) -> ContinuationScore:
    """Each window's mean NLL of its continuation (after the first token, see the module
    docstring) given ``comp``'s compressed context; no gradients, the compressor in eval
    mode (restored after)."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if not windows:
        raise InvalidInputError("no windows to score")
    scores: list[float] = []
    with comp.inference():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            out = comp.target_logits(
                [w.context_ids for w in batch],
                [w.target_ids[:1] for w in batch],
                [w.target_ids[1:] for w in batch],
                ["lm"] * len(batch),
            )
            nll = torch.nn.functional.cross_entropy(out.logits, out.labels, reduction="none")
            sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(
                0, out.rows.cpu(), nll.double().cpu()
            )
            counts = torch.bincount(out.rows.cpu(), minlength=len(batch))
            scores += (sums / counts).tolist()
    return ContinuationScore(label or comp.method, tuple(scores))


TRUNCATIONS = ("head", "tail")
"""The truncations a compressor's continuation NLL is compared with (at its budget)."""


def frozen_baseline_labels(ratio: int) -> list[str]:
    """The rows :func:`frozen_baselines` gives, in order."""
    return ["full_context", *(f"{mode}_truncation@{ratio}x" for mode in TRUNCATIONS)]


def frozen_baselines(base: BaseModel, ratio: int) -> dict[str, Compressor]:
    """The frozen model reading the whole window, and its head / tail truncated to the
    budget of ``ratio`` (the prefix counted in it: the same entries as a compressor keeps)."""
    full, *truncations = frozen_baseline_labels(ratio)
    out = {full: build_compressor("full_context", base)}
    for label, mode in zip(truncations, TRUNCATIONS, strict=True):
        out[label] = build_compressor(
            "truncation", base, ratio=ratio, truncation=mode, prefix_in_budget=True
        )
    return out


def paired_nll_difference(score: ContinuationScore, reference: ContinuationScore) -> Interval:
    """``score - reference`` in nats per token over the same windows, with its paired 95 %
    bootstrap interval (negative: ``score`` predicts the continuation better)."""
    if len(score.window_nll) != len(reference.window_nll):
        raise InvalidInputError(
            f"{score.label} has {len(score.window_nll)} windows, {reference.label} "
            f"{len(reference.window_nll)}: a paired difference needs the same windows"
        )
    return interval_of([a - b for a, b in zip(score.window_nll, reference.window_nll, strict=True)])
