"""Tiny random-init models and a locally built tokenizer, for tests and quick benchmarks.

Nothing is downloaded (see :mod:`ctxcompress.tiny_models`, which builds them); this module
wraps them into the package's :class:`~ctxcompress.models.BaseModel`.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from .models import BaseModel, prepare_tokenizer
from .tiny_models import DEFAULT_MAX_POSITIONS, SPECIAL_TOKENS, build_lm, build_tokenizer

__all__ = ["SPECIAL_TOKENS", "tiny_model", "tiny_tokenizer"]


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with ``<s>``, ``</s>`` and ``<pad>``."""
    return prepare_tokenizer(build_tokenizer(vocab_size))


def tiny_model(
    arch: str = "llama",
    *,
    vocab_size: int = 400,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    attn_implementation: str = "sdpa",
    initializer_range: float = 0.02,
    seed: int = 0,
) -> BaseModel:
    """A tiny random-init causal LM (``"llama"`` or ``"qwen2"``) with its tokenizer.

    With the usual ``initializer_range=0.02`` a frozen tiny model's logits span about ±1, so
    no input can make it confident (the loss floor is near ln(vocab) - 2); training tests
    use a larger range so that a compressor can actually drive the decoder's loss down.
    """
    tokenizer = tiny_tokenizer(vocab_size)
    model = build_lm(
        arch,
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        max_positions=max_positions,
        attn_implementation=attn_implementation,
        initializer_range=initializer_range,
        seed=seed,
    )
    # The source reloads with load_base_model("tiny-llama") (default sizes only; the
    # fingerprint check refuses anything else).
    return BaseModel(model=model, tokenizer=tokenizer, source=f"tiny-{arch}")
