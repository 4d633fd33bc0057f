"""Tiny random-init causal LMs and a locally built byte-level BPE tokenizer: the raw
transformers objects behind ``load_base_model("tiny")`` and :mod:`ctxcompress.testing`.

Nothing is downloaded: the tokenizer is trained in milliseconds on a built-in text, and the
models are built from ``LlamaConfig`` / ``Qwen2Config``. A primitive: it imports nothing from
the package (``models`` wraps these into a ``BaseModel``; ``testing`` offers them to tests).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ARCHITECTURES = ("llama", "qwen2")
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
    """A frozen random-init causal LM (``"llama"`` or ``"qwen2"``) sized for ``tokenizer``."""
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
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation=attn_implementation))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation=attn_implementation))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'qwen2'")
    model.eval()
    model.requires_grad_(False)
    return model
