"""The options every compressor shares (:class:`CompressorConfig`) and the values that
reproduce compressors saved before an option existed (:data:`LEGACY_DEFAULTS`)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidInputError
from ..positions import memory_slots


@dataclass
class CompressorConfig:
    """Options shared by every compressor. Defaults follow the SAC authors' code."""

    ratio: int = 4
    """Compression ratio r: compressed length ~= L / r."""
    chunk_size: int = 510
    """Tokens per independently encoded chunk."""
    context_prefix: str = "### Context:\n"
    """Text put before the context (after BOS) when tokenizing it."""
    add_bos: bool = True
    """Start the context with the tokenizer's BOS token (when it has one)."""
    question_template: str = "\n### Question:\n{question}\n### Answer:\n"
    """Decoder prompt after the ``[LM]`` embedding; no BOS."""
    position_start: int = 1
    """Position id of the first context token (the authors' code is 1-based)."""
    decoder_position_offset: int = 0
    """``[LM]`` takes position ``L + offset`` and the question continues after it. [guess]"""
    lora_rank: int = 128
    """LoRA rank of the encoder adapter; 0 disables the adapter (encoder = frozen base)."""
    lora_alpha: int = 256
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    decoder_lora_rank: int = 0
    """LoRA rank of a second adapter, active only while the decoder reads a compressed
    context (answering, training's decoder pass; never the encoder, the attention sink's
    prefill or a distillation teacher). 0: off, the decoder is the frozen base model (the
    papers). PISCO (arXiv 2501.16075) trains both sides; issue 38, lever 3. Needs the encoder
    adapter (``lora_rank > 0``); same target modules."""
    decoder_lora_alpha: int | None = None
    """LoRA alpha of the decoder adapter; None: twice its rank (the encoder's default)."""
    init_std: float = 0.02
    """Standard deviation of the learned embeddings' normal init."""
    embedding_init: Literal["normal", "table"] = "normal"
    """How the learned input vectors (``[LM]``, ``[AE]``, memory tokens) start: N(0,
    ``init_std``), or drawn per dimension from the mean and std of the base model's input
    embedding table, i.e. at token scale (the SAC authors' code; on SmolLM2-135M the table's
    std is 0.136, ~7x ``init_std``). Anchor embeddings, which are *added* to token
    embeddings, always start at N(0, ``init_std``)."""
    sink_tokens: int = 0
    """Attention sink (METHODS.md §7): the first k context tokens (BOS, then the context
    prefix) are always kept as themselves, counted inside the budget: the frozen model's own
    KV of those tokens (KV methods) or their token embeddings before the soft prompt
    (hidden-state methods). Pretrained LMs park attention on the first token; without it the
    decoder starts out of distribution. 0: off (the papers)."""
    encoder_batch_size: int = 32
    """Chunks per encoder forward pass (memory bound, not a modelling choice)."""
    seed: int = 0
    """Seed of parameter init (and of random anchors where used)."""
    autoencoding: bool = False
    """Learn an ``[AE]`` embedding for the autoencoding objective (reconstruct the context)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form user notes saved with the compressor."""

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InvalidInputError(msg)

        need(
            isinstance(self.ratio, int) and not isinstance(self.ratio, bool),
            f"ratio must be an integer >= 1, got {self.ratio!r}",
        )
        need(self.ratio >= 1, f"ratio must be >= 1 (r=4 means 4x compression), got {self.ratio}")
        need(self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}")
        need(self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}")
        need(
            isinstance(self.decoder_lora_rank, int) and self.decoder_lora_rank >= 0,
            f"decoder_lora_rank must be an integer >= 0, got {self.decoder_lora_rank!r}",
        )
        need(
            not self.decoder_lora_rank or self.lora_rank > 0,
            f"decoder_lora_rank={self.decoder_lora_rank} needs the encoder adapter too: the "
            "decoder adapter is the second adapter of the compressor's LoRA model. Set "
            "lora_rank > 0 (e.g. the same rank), or decoder_lora_rank: 0",
        )
        need(self.encoder_batch_size >= 1, "encoder_batch_size must be >= 1")
        need(
            isinstance(self.sink_tokens, int) and self.sink_tokens >= 0,
            f"sink_tokens must be an integer >= 0, got {self.sink_tokens!r}",
        )
        if self.sink_tokens and self.ratio >= 1 and self.chunk_size >= 1:
            budget = memory_slots(self.chunk_size, self.ratio)
            need(
                self.sink_tokens < budget,
                f"sink_tokens={self.sink_tokens} leaves nothing to compress: a full chunk of "
                f"{self.chunk_size} tokens keeps {budget} entries at ratio {self.ratio}, and the "
                f"sink tokens count inside that budget. Use sink_tokens < {budget} (or a lower "
                "ratio, or longer chunks).",
            )
        need("{question}" in self.question_template, "question_template must contain '{question}'")
        # Every Literal-typed option (in any subclass) must be one of its listed values.
        for name, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is typing.Literal:
                allowed = typing.get_args(hint)
                value = getattr(self, name)
                need(value in allowed, f"{name}={value!r} is not one of {', '.join(allowed)}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, saved: bool = False) -> CompressorConfig:
        """A validated config from options. ``saved=True`` reads a saved compressor's
        config: an option it does not record predates that option, and takes the value
        that reproduces the old behaviour (:data:`LEGACY_DEFAULTS`), not today's default."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidInputError(
                f"Unknown option(s) for {cls.__name__}: {', '.join(unknown)}. "
                f"Known: {', '.join(sorted(names))}."
            )
        if saved:
            data = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k in names}, **data}
        data = {k: tuple(v) if isinstance(v, list) and k != "extra" else v for k, v in data.items()}
        config = cls(**data)
        config.validate()
        return config


LEGACY_DEFAULTS: dict[str, Any] = {
    "embedding_init": "normal",
    "sink_tokens": 0,
    "encoder_attention_warmup_steps": 0,
    "decoder_lora_rank": 0,
    "decoder_lora_alpha": None,
    "anchor_scorer_target": "importance",
    "anchor_scorer_weight": 1.0,
}
"""Options added after compressors were first saved, with the values that reproduce how a
compressor saved without them behaved (see :meth:`CompressorConfig.from_dict`). At those
values they are left out of the fingerprint, so such a compressor keeps its fingerprint (and
the contexts it made stay readable)."""
