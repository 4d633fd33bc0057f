"""Speed and memory of compressed contexts, against the right baselines in the same run.

For each context length L and ratio r (one method, default SAC) it measures, as medians of
``repeats`` runs after ``warmup`` runs:

- **compression**: compressing L tokens vs a plain prefill of the same L tokens (the frozen
  model's KV cache of the full context, no LM head), as a time ratio and tokens/s; for a
  method with LoRA also with the merged-LoRA encoder (:meth:`Compressor.merge_encoder`) and
  the memory its weight copies take. These are timed in turns (:func:`interleaved_seconds`)
  and their ratios are medians of per-round ratios, so a shared machine's drifting speed
  does not pass for a difference between them;
- **answering**: time to first token and decode tokens/s against the compressed context, vs
  the full context, vs a plain prompt of the compressed length (the frozen model's KV of the
  first C tokens: the physical limit of answering from C entries), same decoding loop;
- **KV bytes** of the compressed context vs the full one, and vs (C / L) x full;
- **many questions**: 16 questions against one context in one batched call vs 16 calls.

Decoding is forced to ``max_new_tokens`` tokens (EOS ignored) so every system decodes the
same number of tokens. Numbers from one run are comparable; across runs they are not.

On CUDA every timed call is bracketed by ``torch.cuda.synchronize()`` (kernels run
asynchronously) and each row adds the peak GPU memory of compression and of the plain
prefill. ``base_model="random:llama-3.2-1b"`` times a real model's shape with random weights.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import ctxcompress as cc

from ..context import CompressedContext
from ..errors import InvalidInputError
from ..generation import greedy_generate
from ..methods.base import Compressor
from ..models import BaseModel

QUESTION = "What is the main finding reported in this document?"


@dataclass
class BenchSettings:
    base_model: str = "tiny"
    method: str = "sac"
    lengths: Sequence[int] = (512, 2048, 8192)
    ratios: Sequence[int] = (4, 16)
    repeats: int = 5
    warmup: int = 1
    max_new_tokens: int = 16
    questions: int = 16
    method_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    """``"auto"`` (CUDA when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:1"``..."""
    dtype: str = "auto"
    """``"auto"`` (bfloat16 on CUDA, float32 on the CPU) or a dtype name."""
    compressor: str | None = None
    """A trained compressor (a ``save_pretrained`` folder or a shipped ``embedded:<name>``) to
    measure instead of a freshly built ``method``: its own base model, options and ratio
    (``base_model``, ``method``, ``ratios`` and ``method_options`` are then ignored)."""

    def resolved(self) -> tuple[str, str]:
        """The device and dtype names this run uses."""
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidInputError(
                f"device={device!r} but torch {torch.__version__} sees no CUDA device; "
                "use --device cpu (or auto)."
            )
        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        return device, dtype


def synchronize() -> None:
    """Wait for queued CUDA kernels (a no-op without CUDA): timers must not stop early."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Wall times of each of ``fns`` over ``repeats`` rounds after ``warmup`` rounds, run in
    turns — one call of each per round, the order rotating — so that a machine whose speed
    drifts (a shared host) slows them alike and the ratios of one round compare like with
    like (:func:`round_ratio`)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize()
            start = time.perf_counter()
            fns[name]()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def round_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """The median over rounds of one round's ``numerator`` time over its ``denominator``."""
    return statistics.median(
        a / b for a, b in zip(times[numerator], times[denominator], strict=True)
    )


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak CUDA memory allocated while ``fn()`` runs (None on the CPU)."""
    if device.type != "cuda":
        return None
    synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize()
    return torch.cuda.max_memory_allocated(device)


def document_ids(base: BaseModel, length: int) -> list[int]:
    """``length`` token ids of real text (ACLSum full texts when installed, else a fixed
    paragraph repeated), starting like every tokenized context (BOS + prefix)."""
    try:
        from ..data import load_texts

        text = "\n\n".join(d.text for d in load_texts("aclsum:train", limit=20))
    except Exception:  # any offline source will do for timing
        text = (
            "Context compression turns a long document into a short learned "
            "representation that a frozen language model reads instead. "
        ) * 400
    ids = base.tokenizer(text, add_special_tokens=False).input_ids
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def _decode(comp: Compressor, ctx: CompressedContext, n_questions: int, max_new_tokens: int):
    rows = [comp.decoder_prompt(ctx, comp.question_ids(QUESTION))] * n_questions
    with torch.inference_mode(), comp.decoder_mode():
        greedy_generate(
            comp.lm, comp.tokenizer, rows, max_new_tokens=max_new_tokens, eos_token_ids=[]
        )


def _answer_timings(comp: Compressor, ctx: CompressedContext, s: BenchSettings) -> dict:
    first = median_seconds(lambda: _decode(comp, ctx, 1, 1), s.repeats, s.warmup)
    full = median_seconds(lambda: _decode(comp, ctx, 1, s.max_new_tokens), s.repeats, s.warmup)
    return {
        "ttft_s": first,
        "answer_s": full,
        "decode_tokens_per_s": (s.max_new_tokens - 1) / max(full - first, 1e-9),
    }


def _merged_compress(comp: Compressor, ids: list[int]) -> None:
    """One compression with the merged-LoRA encoder (its copies kept between calls)."""
    comp.merge_encoder(True)
    try:
        comp.compress_ids([ids])
    finally:
        comp.merge_encoder(False, keep_copies=True)


def bench_one(
    base: BaseModel, comp: Compressor, plain: Compressor, length: int, s: BenchSettings
) -> dict[str, Any]:
    """All measurements for one (L, r)."""
    ids = document_ids(base, length)
    with torch.inference_mode():
        timed = {
            "compress": lambda: comp.compress_ids([ids]),
            "prefill": lambda: plain.compress_ids([ids]),
        }
        if comp.merged_encoder_bytes:
            timed["merged"] = lambda: _merged_compress(comp, ids)
        times = interleaved_seconds(timed, s.repeats, s.warmup)
        comp.merge_encoder(False)
        compress_s, prefill_s = (statistics.median(times[k]) for k in ("compress", "prefill"))
        merged_s = statistics.median(times["merged"]) if "merged" in times else None
        compress_peak = peak_memory_bytes(lambda: comp.compress_ids([ids]), comp.device)
        prefill_peak = peak_memory_bytes(lambda: plain.compress_ids([ids]), comp.device)
        (ctx,) = comp.compress_ids([ids])
        (full,) = plain.compress_ids([ids])
        (limit,) = plain.compress_ids([ids[: ctx.compressed_length]])
    c = ctx.compressed_length
    answer = _answer_timings(comp, ctx, s)
    answer_full = _answer_timings(plain, full, s)
    answer_limit = _answer_timings(plain, limit, s)
    batched = median_seconds(
        lambda: _decode(comp, ctx, s.questions, s.max_new_tokens), s.repeats, s.warmup
    )
    sequential = s.questions * answer["answer_s"]
    expected_bytes = c / length * full.num_bytes
    return {
        "method": comp.method,
        "L": length,
        "ratio": comp.config.ratio,
        "C": c,
        "compress_s": compress_s,
        "prefill_s": prefill_s,
        "compress_vs_prefill": round_ratio(times, "compress", "prefill"),
        "compress_merged_s": merged_s,
        "compress_merged_vs_prefill": round_ratio(times, "merged", "prefill") if merged_s else None,
        "merged_extra_bytes": comp.merged_encoder_bytes,
        "compress_peak_bytes": compress_peak,
        "prefill_peak_bytes": prefill_peak,
        "compress_tokens_per_s": length / compress_s,
        "prefill_tokens_per_s": length / prefill_s,
        "answer": answer,
        "answer_full_context": answer_full,
        "answer_plain_prompt_of_C": answer_limit,
        "answer_vs_plain_prompt_of_C": answer["answer_s"] / answer_limit["answer_s"],
        "answer_vs_full_context": answer["answer_s"] / answer_full["answer_s"],
        "kv_bytes": ctx.num_bytes,
        "kv_bytes_full": full.num_bytes,
        "kv_bytes_vs_expected": ctx.num_bytes / expected_bytes,
        "questions": s.questions,
        "batched_s": batched,
        "sequential_s": sequential,
        "batched_speedup": sequential / batched,
    }


def _compressor(
    s: BenchSettings, ratio: int | None, device: str, dtype: str
) -> tuple[BaseModel, Compressor]:
    """The base model and the compressor one ratio of the grid measures: ``s.compressor``
    loaded on its own base model, else a fresh ``s.method`` at ``ratio``."""
    if s.compressor is None:
        base = cc.load_base_model(s.base_model, dtype=dtype, device=device)
        return base, cc.build_compressor(s.method, base, ratio=ratio, **s.method_options)
    from ..methods.persistence import read_header
    from ..shipped import is_shipped_name
    from ..shipped import resolve as resolve_shipped

    folder = resolve_shipped(s.compressor) if is_shipped_name(s.compressor) else s.compressor
    source = read_header(Path(folder))["base_model"]["source"]
    base = cc.load_base_model(source, dtype=dtype, device=device)
    return base, cc.load_compressor(folder, base_model=base)


def run_speed_benchmark(
    s: BenchSettings, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the grid; returns a JSON-able dict with settings, machine and rows."""
    rows = []
    device, dtype = s.resolved()
    for ratio in [None] if s.compressor else s.ratios:
        base, comp = _compressor(s, ratio, device, dtype)
        plain = cc.build_compressor(
            "full_context",
            base,
            context_prefix="",
            add_bos=False,
            position_start=comp.config.position_start,
        )
        limit = getattr(base.model.config, "max_position_embeddings", 10**9)
        for length in s.lengths:
            if length + s.max_new_tokens + 64 > limit:
                if progress:
                    progress(f"skip L={length}: the model has {limit} positions")
                continue
            row = bench_one(base, comp, plain, length, s)
            rows.append(row)
            if progress:
                progress(
                    f"L={length} r={ratio}: compress/prefill "
                    f"{row['compress_vs_prefill']:.2f}, answer/limit "
                    f"{row['answer_vs_plain_prompt_of_C']:.2f}, batched x"
                    f"{row['batched_speedup']:.1f}"
                )
    settings = asdict(s) | {
        "lengths": list(s.lengths),
        "ratios": list(s.ratios),
        "device": device,
        "dtype": dtype,
    }
    if s.compressor:
        # The fields a trained compressor overrides are recorded as measured, not as the
        # ignored defaults (a reader of the JSON must not see "tiny" for a SmolLM2 run).
        settings |= {
            "base_model": base.source,
            "method": comp.method,
            "ratios": [comp.config.ratio],
            "method_options": {},
        }
    return {
        "settings": settings,
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "device_name": torch.cuda.get_device_name(device)
            if device.startswith("cuda")
            else platform.processor() or "cpu",
            "platform": platform.platform(),
        },
        "rows": rows,
    }


def markdown_report(result: dict[str, Any]) -> str:
    """The targets of the speed issue, one row per (L, r)."""
    head = (
        "| L | r | C | compress / prefill | same, merged LoRA | answer / plain prompt of C | "
        "answer / full context | TTFT ms (C / full) | decode tok/s | KV KiB (C / full) | "
        "KV bytes / expected | 16 q batched speed-up | peak GiB (compress / prefill) |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in result["rows"]:
        merged = r.get("compress_merged_vs_prefill")
        lines.append(
            f"| {r['L']} | {r['ratio']} | {r['C']} | {r['compress_vs_prefill']:.2f} | "
            f"{'-' if merged is None else f'{merged:.2f}'} | "
            f"{r['answer_vs_plain_prompt_of_C']:.2f} | {r['answer_vs_full_context']:.2f} | "
            f"{1000 * r['answer']['ttft_s']:.0f} / "
            f"{1000 * r['answer_full_context']['ttft_s']:.0f} | "
            f"{r['answer']['decode_tokens_per_s']:.0f} | "
            f"{r['kv_bytes'] / 1024:.0f} / {r['kv_bytes_full'] / 1024:.0f} | "
            f"{r['kv_bytes_vs_expected']:.3f} | "
            f"{r['batched_speedup']:.1f}x | {_peaks(r)} |"
        )
    return "\n".join(lines)


def _peaks(row: dict[str, Any]) -> str:
    if row.get("compress_peak_bytes") is None:
        return "-"
    return f"{row['compress_peak_bytes'] / 2**30:.2f} / {row['prefill_peak_bytes'] / 2**30:.2f}"
