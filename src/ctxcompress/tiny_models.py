"""Tiny random-init causal LMs and a locally built byte-level BPE tokenizer: the raw
transformers objects behind ``load_base_model("tiny")`` and :mod:`ctxcompress.testing`.

Nothing is downloaded: the tokenizer is trained in milliseconds on a built-in text, and the
models are built from the configs of the architectures in :data:`ARCHITECTURES` (Llama,
Qwen2, Qwen3, Mistral, Phi-3, Gemma 3 with its sliding-window layers). A primitive: it
imports nothing from the package (``models`` wraps these into a ``BaseModel``; ``testing``
offers them to tests).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3")
TINY_SLIDING_WINDOW = 16
"""Gemma 3's local-attention window in the tiny models (the real ones: 512 or 1024)."""
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
DEFAULT_MAX_POSITIONS = 2048
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Context compression turns a long document "
    "into a few keys and values that a frozen language model reads instead of the full text. "
    "Question: who wrote the report? Answer: the committee wrote it in 1987 in Paris. "
    "Anchors collect information from the whole chunk through bidirectional attention. "
    "### Context: ### Question: ### Answer: 0123456789 abcdefghijklmnopqrstuvwxyz "
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-\n"
)


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with ``<s>``, ``</s>`` and ``<pad>``
    (not yet through ``models.prepare_tokenizer``)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def build_lm(
    arch: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    attn_implementation: str = "sdpa",
    initializer_range: float = 0.02,
    seed: int = 0,
) -> PreTrainedModel:
    """A frozen random-init causal LM of architecture ``arch`` (one of
    :data:`ARCHITECTURES`) sized for ``tokenizer``. ``"gemma3"`` alternates sliding-window
    (window :data:`TINY_SLIDING_WINDOW`) and global layers, like the real model's 5:1."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {ARCHITECTURES}")
    common["attn_implementation"] = attn_implementation
    head_dim = hidden_size // num_heads
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=head_dim))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, head_dim=head_dim, sliding_window=None))
    elif arch == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common))
    else:
        layer_types = [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)
        ]
        config = Gemma3TextConfig(
            **common,
            head_dim=head_dim,
            sliding_window=TINY_SLIDING_WINDOW,
            layer_types=layer_types,
        )
        model = Gemma3ForCausalLM(config)
    model.eval()
    model.requires_grad_(False)
    return model


# Real models' shapes, for speed and memory benchmarks with random weights: speed does not
# depend on the weights, so a random-init model of Llama-3.2-1B's shape times what the real
# one would (``load_base_model("random:llama-3.2-1b")``). The tokenizer is the local tiny one
# (its ids are a subset of the real vocabulary); the LM head keeps the real vocabulary size.
REAL_SHAPES: dict[str, dict] = {  # Llama-architecture models, by name
    "llama-3.2-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
}


def build_shaped_lm(
    shape: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> PreTrainedModel:
    """A frozen random-init model of a real model's shape (one of :data:`REAL_SHAPES`),
    built directly on ``device`` in ``dtype`` (a 1B model never passes through CPU float32)."""
    if shape not in REAL_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; use one of {sorted(REAL_SHAPES)}")
    fields = REAL_SHAPES[shape]
    if len(tokenizer) > fields["vocab_size"]:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} ids, the {shape} shape only {fields['vocab_size']}"
        )
    config = LlamaConfig(
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device or "cpu"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.requires_grad_(False)
    return model
