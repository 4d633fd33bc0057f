"""The shared mechanics of every compressor: text handling, encoder/decoder switching,
generation, fingerprints and ``save_pretrained`` / ``from_pretrained``.

A method subclasses :class:`Compressor`, declares its config dataclass and implements
:meth:`Compressor.encode_ids` (token ids -> :class:`CompressedContext` list, with gradients).
Encoder and decoder share one set of base weights: the encoder is the base LM with the
method's LoRA adapter active, the decoder is the same LM with the adapter switched off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache

from ..context import CompressedContext
from ..errors import ContextTooLongError, CorruptFileError, InvalidInputError, ModelLoadError
from ..generation import DecoderPrompt, build_decoder_batch, greedy_generate
from ..models import BaseModel, cache_kwargs, load_base_model, max_positions
from ..positions import memory_slots, sink_count
from ..version import __version__

CONFIG_FILE = "ctxcompress.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1


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
}
"""Options added after compressors were first saved, with the values that reproduce how a
compressor saved without them behaved (see :meth:`CompressorConfig.from_dict`). At those
values they are left out of the fingerprint, so such a compressor keeps its fingerprint (and
the contexts it made stay readable)."""


class Compressor(nn.Module):
    """Base class: a frozen base LM, a LoRA encoder adapter and a learned ``[LM]`` embedding."""

    method: ClassVar[str] = ""
    config_class: ClassVar[type[CompressorConfig]] = CompressorConfig
    context_kind: ClassVar[str] = "kv"
    uses_lm_token: ClassVar[bool] = True
    """Whether the decoder prompt starts with the learned ``[LM]`` embedding."""

    def __init__(self, base: BaseModel, config: CompressorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tokenizer = base.tokenizer
        self.base_source = base.source
        self.base_fingerprint = base.fingerprint
        lm = base.model
        lm.requires_grad_(False)
        if lm.config._attn_implementation not in ("sdpa", "eager"):
            raise ModelLoadError(
                f"attention backend {lm.config._attn_implementation!r} is not supported; "
                "load the model with attn_implementation='sdpa' or 'eager'."
            )
        if config.lora_rank > 0 and _adapter_layers(lm):
            raise ModelLoadError(
                "This base model object already carries another compressor's LoRA adapter "
                "(adapters are injected in place, and the decoder must stay the frozen base). "
                "Give each compressor its own model: load it again with load_base_model(...)."
            )
        self.lm = lm
        if config.lora_rank > 0:
            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_target_modules),
                bias="none",
            )
            # Injects the LoRA layers into `lm` in place; `self.model` wraps the same modules.
            # peft draws LoRA A from torch's global generator: seed it from the config (in a
            # forked RNG, leaving the caller's state alone) so that a rebuild is identical.
            devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(config.seed)
                self.model: nn.Module = get_peft_model(lm, lora)
        else:
            self.model = lm
        self.generator = torch.Generator().manual_seed(config.seed)
        hidden = lm.config.hidden_size
        use_lm = self.uses_lm_token
        self.lm_embedding = nn.Parameter(self._learned_vectors(hidden)) if use_lm else None
        use_ae = self.uses_lm_token and config.autoencoding
        self.ae_embedding = nn.Parameter(self._learned_vectors(hidden)) if use_ae else None
        self.training_step = 0
        """Optimizer steps taken so far; the trainer sets it before each step (read by
        step-dependent recipes, e.g. SAC's ``encoder_attention_warmup_steps``)."""
        self._fingerprint_cache: tuple[tuple[int, ...], str] | None = None
        self._merge_encoder = False
        self._merged_cache: tuple[tuple[int, ...], list[nn.Parameter]] | None = None
        self.eval()

    # ------------------------------------------------------------------ basics
    def _normal(self, *shape: int) -> torch.Tensor:
        """Init tensor N(0, init_std), reproducible from the config seed, in the model dtype."""
        sample = torch.randn(*shape, generator=self.generator) * self.config.init_std
        return sample.to(device=self.device, dtype=self.dtype)

    def _learned_vectors(self, *shape: int) -> torch.Tensor:
        """Init of learned input vectors (``[LM]``, ``[AE]``, memory tokens) per
        ``embedding_init``: N(0, init_std), or the embedding table's per-dimension mean and
        std (token scale)."""
        if self.config.embedding_init == "normal":
            return self._normal(*shape)
        table = self.lm.get_input_embeddings().weight.detach().float()
        mean, std = table.mean(dim=0).cpu(), table.std(dim=0).cpu()
        sample = mean + std * torch.randn(*shape, generator=self.generator)
        return sample.to(device=self.device, dtype=self.dtype)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    @property
    def backbone(self) -> nn.Module:
        """The base LM's transformer body (no LM head): what the encoder runs."""
        return self.lm.get_decoder()

    @contextlib.contextmanager
    def decoder_mode(self) -> Iterator[None]:
        """Run the frozen decoder: the same base weights with every adapter switched off."""
        with adapters_disabled(self.lm):
            yield

    @contextlib.contextmanager
    def encoder_mode(self) -> Iterator[None]:
        """Run the encoder: this compressor's adapter on (a compressor without an adapter of
        its own runs the frozen base, even if the model object carries another's adapter)."""
        if not isinstance(self.model, PeftModel):
            with adapters_disabled(self.lm):
                yield
        elif self._merge_encoder and not torch.is_grad_enabled() and not self.training:
            with self._merged_weights_in_place():
                yield
        else:
            yield

    def merge_encoder(self, enabled: bool = True) -> None:
        """Inference option: run the encoder with the LoRA update folded into copies of the
        adapted weights (``W + s·BA``) instead of LoRA's extra low-rank matmuls per layer.

        Faster encoding for one extra copy of every adapted weight matrix in memory (SmolLM2-135M
        with q/v adapters: 13.3 M values, 53 MB in float32). Used only under ``no_grad`` /
        ``inference_mode`` in eval mode; training always runs the LoRA path. The copies are
        rebuilt when a trainable tensor changes. Same result up to rounding in the model dtype.
        """
        self._merge_encoder = bool(enabled)
        if not enabled:
            self._merged_cache = None

    @property
    def merged_encoder_bytes(self) -> int:
        """Memory the merged-LoRA encoder's weight copies take (0 without an adapter)."""
        if not isinstance(self.model, PeftModel):
            return 0
        weights = [layer.get_base_layer().weight for layer in _adapter_layers(self.lm)]
        return sum(w.numel() * w.element_size() for w in weights)

    def _merged_weights(self, layers: list[BaseTunerLayer]) -> list[nn.Parameter]:
        versions = tuple(p._version for p in self.trainable_parameters().values())
        if self._merged_cache is None or self._merged_cache[0] != versions:
            merged = []
            with torch.no_grad():
                for layer in layers:
                    weight = layer.get_base_layer().weight
                    delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters)
                    merged.append(nn.Parameter((weight + delta).to(weight.dtype), False))
            self._merged_cache = (versions, merged)
        return self._merged_cache[1]

    @contextlib.contextmanager
    def _merged_weights_in_place(self) -> Iterator[None]:
        """Swap the merged copies in for the adapted base weights (adapters off); restore."""
        layers = _adapter_layers(self.lm)
        merged = self._merged_weights(layers)
        originals = [layer.get_base_layer().weight for layer in layers]
        with adapters_disabled(self.lm):
            try:
                for layer, weight in zip(layers, merged, strict=True):
                    layer.get_base_layer()._parameters["weight"] = weight
                yield
            finally:
                for layer, weight in zip(layers, originals, strict=True):
                    layer.get_base_layer()._parameters["weight"] = weight

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters training updates (LoRA weights and learned embeddings), by name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    @property
    def fingerprint(self) -> str:
        """Hash of method, config and trained parameters; recorded in every context.

        Cached, and recomputed only when a trainable tensor was modified in place (an
        optimizer step bumps ``tensor._version``).
        """
        params = self.trainable_parameters()
        versions = tuple(p._version for p in params.values())
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != versions:
            h = hashlib.sha256(self.method.encode())
            config = {
                k: v
                for k, v in self.config.to_dict().items()
                if not (k in LEGACY_DEFAULTS and v == LEGACY_DEFAULTS[k])
            }
            h.update(json.dumps(config, sort_keys=True).encode())
            h.update(self.base_fingerprint.encode())
            for name, p in sorted(params.items()):
                h.update(name.encode())
                h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint_cache = (versions, h.hexdigest()[:16])
        return self._fingerprint_cache[1]

    # ------------------------------------------------------------------ text -> ids
    def context_ids(self, text: str) -> list[int]:
        """Token ids of one context: ``BOS + context_prefix + text`` (METHODS.md §1)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"a context must be a str, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInputError("a context is empty (or only whitespace): nothing to compress")
        ids = self.tokenizer(self.config.context_prefix + text, add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        return ([bos] if self.config.add_bos and bos is not None else []) + list(ids)

    def prefix_ids(self) -> list[int]:
        """The ids every tokenized context starts with: BOS (if used) + ``context_prefix``."""
        ids = self.tokenizer(self.config.context_prefix, add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        return ([bos] if self.config.add_bos and bos is not None else []) + list(ids)

    def question_ids(self, question: str) -> list[int]:
        if not isinstance(question, str):
            raise InvalidInputError(f"a question must be a str, got {type(question).__name__}")
        if not question.strip():
            raise InvalidInputError("a question is empty")
        prompt = self.config.question_template.format(question=question)
        return list(self.tokenizer(prompt, add_special_tokens=False).input_ids)

    def _check_length(self, length: int) -> None:
        limit = max_positions(self.lm)
        last = length - 1 + self.config.position_start
        if last >= limit:
            raise ContextTooLongError(
                f"the context has {length} tokens, but the base model has only {limit} "
                "positions (and the question and answer need some too). Split the document "
                "into parts and compress each, or use a model with a longer context."
            )

    # ------------------------------------------------------------------ attention sink
    def sink_lengths(self, contexts: Sequence[Sequence[int]]) -> list[int]:
        """Sink tokens each context keeps: ``sink_tokens``, capped by the budget of its
        first chunk (they count inside it; see :func:`~ctxcompress.positions.sink_count`)."""
        k, cfg = self.config.sink_tokens, self.config
        if not k:
            return [0] * len(contexts)
        return [sink_count(min(len(ids), cfg.chunk_size), cfg.ratio, k) for ids in contexts]

    def sink_kv(self, contexts: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The frozen model's own keys and values ``[layers, kv_heads, s, head_dim]`` of each
        context's sink tokens (a causal prefill of its first s tokens, adapter off), at their
        positions from ``position_start``. No gradients: nothing trainable reaches them."""
        rows = [list(ids[:n]) for ids, n in zip(contexts, self.sink_lengths(contexts), strict=True)]
        with torch.no_grad(), self.decoder_mode():
            return prefill_kv(
                self.lm, rows, self.config.position_start, self.config.encoder_batch_size
            )

    def sink_positions(self, length: int) -> torch.Tensor:
        """Position ids of ``length`` sink entries."""
        return torch.arange(length) + self.config.position_start

    # ------------------------------------------------------------------ compression
    def encode_ids(self, contexts: Sequence[Sequence[int]]) -> list[CompressedContext]:
        """Compress tokenized contexts, keeping gradients. Implemented by each method."""
        raise NotImplementedError

    def compress(self, texts: str | Sequence[str]) -> CompressedContext | list[CompressedContext]:
        """Compress one text (-> one context) or a list of texts (-> list, encoded together)."""
        single = isinstance(texts, str)
        items = [texts] if single else texts
        if not single and (not isinstance(items, Sequence) or not items):
            raise InvalidInputError("compress() takes a str or a non-empty list of str")
        ids = [self.context_ids(t) for t in items]
        contexts = self.compress_ids(ids)
        return contexts[0] if single else contexts

    def compress_ids(self, contexts: Sequence[Sequence[int]]) -> list[CompressedContext]:
        """Compress tokenized contexts for inference (no gradients, adapter active)."""
        vocab = self.lm.get_input_embeddings().num_embeddings
        for ids in contexts:
            if len(ids) == 0:
                raise InvalidInputError("a tokenized context is empty")
            as_tensor = torch.as_tensor(ids)
            if (
                as_tensor.is_floating_point()
                or as_tensor.dim() != 1
                or not (int(as_tensor.min()) >= 0 and int(as_tensor.max()) < vocab)
            ):
                raise InvalidInputError(
                    f"a context holds a token id outside the model's vocabulary [0, {vocab}): "
                    "tokenize with this compressor's tokenizer (or use compress(text))"
                )
            self._check_length(len(ids))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self.encode_ids(contexts)
        finally:
            self.train(was_training)
        return [c.detach() for c in out]

    def _new_context(self, original_length: int, meta: dict[str, Any] | None = None, **tensors):
        return CompressedContext(
            kind=self.context_kind,
            method=self.method,
            base_model=self.base_fingerprint,
            compressor=self.fingerprint,
            original_length=original_length,
            meta={"ratio": self.config.ratio, **(meta or {})},
            **tensors,
        )

    def load_context(self, path: str | os.PathLike) -> CompressedContext:
        """Load a context and refuse it unless this compressor (method + base model) made it."""
        ctx = CompressedContext.load(
            path,
            device=self.device,
            expect_method=self.method,
            expect_base_model=self.base_fingerprint,
        )
        ctx.check_compatible(
            method=self.method, base_model=self.base_fingerprint, compressor=self.fingerprint
        )
        return ctx

    # ------------------------------------------------------------------ decoding
    def first_decoder_position(self, ctx: CompressedContext) -> int:
        """Position id of the first decoder input after the context.

        Default: right after the *largest* position of a compressed entry (as if the
        compressed context were an ordinary prompt), so that the decoder's positions always
        increase from the context into the question. (Not the last entry's: PIC's memory
        groups sit after their chunks, and a short last chunk puts its group below the one
        before it.) SAC and EPL override it to continue from L, the original length.
        """
        if ctx.positions is not None and ctx.compressed_length:
            return int(ctx.positions.max()) + 1
        return ctx.compressed_length + self.config.position_start

    def positions_needed(self, ctx: CompressedContext, prompt_length: int, new_tokens: int) -> int:
        """Positions an answer of ``new_tokens`` to a ``prompt_length``-token question prompt
        reaches after ``ctx``: the one rule ``generate`` and the service both check against
        the model's positions (the opener — ``[LM]`` and any prompt vectors — included)."""
        opener = self.task_prefix("lm")
        opener_length = 0 if opener is None else int(opener.shape[0])
        return self.first_decoder_position(ctx) + opener_length + prompt_length + new_tokens

    def task_embedding(self, task: str) -> torch.Tensor | None:
        """The learned embedding that opens the decoder prompt: ``[LM]`` or ``[AE]``."""
        if task == "lm":
            return self.lm_embedding
        if task == "ae":
            if self.ae_embedding is None:
                raise InvalidInputError(
                    f"{self.method} was built without an [AE] embedding: set autoencoding=true "
                    "in its options to train with the autoencoding objective"
                )
            return self.ae_embedding
        raise InvalidInputError(f"unknown decoder task {task!r}; use 'lm' or 'ae'")

    def task_prefix(self, task: str) -> torch.Tensor | None:
        """The learned vectors ``[n, hidden]`` that open the decoder prompt for ``task``:
        ``[LM]`` or ``[AE]`` alone by default; prompt-tuned baselines put their prompt
        vectors before it."""
        opener = self.task_embedding(task)
        return None if opener is None else opener[None]

    def decoder_prompt(
        self, ctx: CompressedContext, prompt_ids: Sequence[int], task: str = "lm"
    ) -> DecoderPrompt:
        """One decoder row: the context, ``[LM]``/``[AE]`` (if the method has them), then the
        prompt tokens."""
        embed = self.lm.get_input_embeddings()
        ids = torch.tensor(list(prompt_ids), dtype=torch.long, device=self.device)
        parts = [embed(ids)]
        opener = self.task_prefix(task)
        if opener is not None:
            parts.insert(0, opener.to(self.dtype))
        length = sum(int(p.shape[0]) for p in parts)
        start = self.first_decoder_position(ctx)
        positions = torch.arange(start, start + length, device=self.device)
        prefix: CompressedContext | None = ctx if ctx.compressed_length else None
        if ctx.kind == "embeds":
            prefix = None
            if ctx.compressed_length:
                parts.insert(0, ctx.embeds.to(self.dtype))
                positions = torch.cat([ctx.positions.to(self.device), positions])
        return DecoderPrompt(prefix=prefix, embeds=torch.cat(parts), positions=positions)

    def decoder_hidden(
        self,
        contexts: Sequence[CompressedContext],
        prompt_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Frozen decoder's last hidden states for ``[LM] + prompt`` after each context.

        Differentiable (gradients flow into the contexts). Returns ``[B, T, hidden]``; rows
        are left-padded, so the last ``n = k + len(prompt_ids[b])`` columns of row b are its
        inputs (``k``: the rows of :meth:`task_prefix`) and column ``-n + i`` predicts the
        token after input i. No LM head is applied: training computes logits only where
        there are labels.
        """
        tasks = tasks or ["lm"] * len(contexts)
        with self.decoder_mode():
            rows = [
                self.decoder_prompt(c, ids, task)
                for c, ids, task in zip(contexts, prompt_ids, tasks, strict=True)
            ]
            batch = build_decoder_batch(self.lm, rows)
            out = self.backbone(
                inputs_embeds=batch.inputs_embeds,
                position_ids=batch.position_ids,
                attention_mask=batch.attention_mask,
                **cache_kwargs(batch.cache),
                use_cache=False,
            )
        return out.last_hidden_state

    def decoder_forward(
        self,
        contexts: Sequence[CompressedContext],
        prompt_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Decoder logits ``[B, T, vocab]`` (layout as :meth:`decoder_hidden`)."""
        hidden = self.decoder_hidden(contexts, prompt_ids, tasks)
        return self.lm.get_output_embeddings()(hidden)

    def target_logits(
        self,
        context_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compress, then teacher-force ``target`` after ``[task] + prompt``: the float32
        logits ``[N, vocab]`` that predict each of the N target tokens (all rows, in order),
        the N labels, and the row each belongs to. The LM head runs only there."""
        contexts = self.encode_ids(context_ids)
        inputs = [list(p) + list(t)[:-1] for p, t in zip(prompt_ids, target_ids, strict=True)]
        hidden = self.decoder_hidden(contexts, inputs, tasks)
        width = hidden.shape[1]
        rows, cols, labels = [], [], []
        tasks = tasks or ["lm"] * len(target_ids)
        for row, (p, t, task) in enumerate(zip(prompt_ids, target_ids, tasks, strict=True)):
            prefix = self.task_prefix(task)  # [LM]/[AE] (and prompt vectors), if any
            opener = 0 if prefix is None else int(prefix.shape[0])
            if opener + len(p) == 0:
                raise InvalidInputError("a method without [LM] needs a non-empty prompt")
            # The row is [opener vectors] + p + t[:-1], right-aligned; the input just before
            # t[i] (the last prompt token, or the last opener vector) predicts it.
            before_target = width - (opener + len(p) + len(t) - 1) + opener + len(p) - 1
            for i, token in enumerate(t):
                rows.append(row)
                cols.append(before_target + i)
                labels.append(token)
        if not labels:
            raise InvalidInputError("a training batch has no target tokens")
        device = hidden.device
        row_index = torch.tensor(rows, device=device)
        selected = hidden[row_index, torch.tensor(cols, device=device)]
        logits = self.lm.get_output_embeddings()(selected).float()
        return logits, torch.tensor(labels, device=device), row_index

    def forward(
        self,
        context_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
        *,
        teacher_logits: torch.Tensor | None = None,
        teacher_indices: torch.Tensor | None = None,
        teacher_rows: Sequence[int] = (),
        distill_weight: float = 0.0,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, int]:
        """Training loss: compress, then teacher-force ``target`` after ``[task] + prompt``.

        Returns the *sum* of token cross-entropies over all target tokens and their count
        (the trainer normalises by the global count, so that any split of a batch over
        processes and accumulation steps gives the same gradient). Logits are computed only
        at the supervised positions.

        Distillation (METHODS.md §7): with ``teacher_logits`` — a teacher's logits at the
        target positions of the rows ``teacher_rows`` (in row order, as
        :meth:`target_logits` gives them) — the sum becomes
        ``CE + distill_weight * T^2 * KL(teacher_T || student_T)`` summed over those
        positions, ``T = temperature``. With ``teacher_indices`` ``[N, k]`` the teacher is
        sparse: ``teacher_logits`` ``[N, k]`` are its top-k logits at those vocabulary ids
        (see :func:`distillation_kl`). ``last_loss_terms`` keeps the two sums (detached) for
        logging.
        """
        logits, labels, row_index = self.target_logits(context_ids, prompt_ids, target_ids, tasks)
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        loss = ce
        kl = torch.zeros((), device=ce.device)
        if teacher_logits is not None and len(teacher_rows):
            chosen = torch.isin(row_index, torch.tensor(list(teacher_rows), device=ce.device))
            student = logits[chosen]
            expected = student.shape if teacher_indices is None else teacher_indices.shape
            if teacher_logits.shape != expected or len(teacher_logits) != len(student):
                raise InvalidInputError(
                    f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                    f"{tuple(student.shape)} target positions: the teacher must read the same "
                    "tokens with the same vocabulary"
                )
            kl = distillation_kl(student, teacher_logits.float(), temperature, teacher_indices)
            loss = ce + distill_weight * temperature**2 * kl
        self.last_loss_terms = {"ce": float(ce.detach()), "kl": float(kl.detach())}
        return loss, len(labels)

    def generate(
        self,
        context: CompressedContext | Sequence[CompressedContext],
        questions: str | Sequence[str],
        *,
        max_new_tokens: int = 32,
        stop: Sequence[str] | str | None = None,
        batch_size: int = 32,
        on_token: Callable[[int, int], None] | None = None,
    ) -> str | list[str]:
        """Answer questions greedily against compressed context(s).

        ``context`` is one context (every question is asked against it, in batches of
        ``batch_size``) or a list of contexts paired one-to-one with ``questions``. A single
        question string returns a single answer. Answering never modifies the context.

        ``on_token(i, token_id)``, if given, is called for each token generated for question
        ``i`` (its index in ``questions``) as it is produced, for streaming; see
        :func:`~ctxcompress.generation.greedy_generate`. The answers are the same with or
        without it.
        """
        single = isinstance(questions, str)
        qs = [questions] if single else list(questions)
        if not qs:
            raise InvalidInputError("generate() needs at least one question")
        if isinstance(context, CompressedContext):
            contexts = [context] * len(qs)
        else:
            contexts = list(context)
            if len(contexts) != len(qs):
                raise InvalidInputError(
                    f"{len(contexts)} contexts but {len(qs)} questions: pass one context, or "
                    "one context per question"
                )
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if batch_size < 1:
            raise InvalidInputError("batch_size must be >= 1")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        for c in {id(c): c for c in contexts}.values():
            if not isinstance(c, CompressedContext):
                raise InvalidInputError(f"expected a CompressedContext, got {type(c).__name__}")
            c.check_compatible(
                method=self.method, base_model=self.base_fingerprint, compressor=self.fingerprint
            )
        prompt_ids = [self.question_ids(q) for q in qs]
        limit = max_positions(self.lm)
        for c, ids in zip(contexts, prompt_ids, strict=True):
            if self.positions_needed(c, len(ids), max_new_tokens) > limit:
                raise ContextTooLongError(
                    f"context ({c.original_length} tokens) + question ({len(ids)}) + "
                    f"max_new_tokens ({max_new_tokens}) exceed the model's {limit} positions"
                )
        eos = self._eos_ids()
        answers: list[str] = []
        # Move each distinct context once: rows that share a context object then share one
        # expanded KV prefix instead of a stacked copy per row.
        moved = {id(c): c.to(self.device, self.dtype) for c in contexts}
        with torch.inference_mode(), self.decoder_mode():
            for start in range(0, len(qs), batch_size):
                rows = [
                    self.decoder_prompt(moved[id(c)], ids)
                    for c, ids in zip(
                        contexts[start : start + batch_size],
                        prompt_ids[start : start + batch_size],
                        strict=True,
                    )
                ]
                answers += [
                    g.text
                    for g in greedy_generate(
                        self.lm,
                        self.tokenizer,
                        rows,
                        max_new_tokens=max_new_tokens,
                        eos_token_ids=eos,
                        stop_strings=stops,
                        on_token=_offset_rows(on_token, start),
                    )
                ]
        return answers[0] if single else answers

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.lm.generation_config.eos_token_id
        ids |= set(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    # ------------------------------------------------------------------ persistence
    def learned_embeddings(self) -> dict[str, torch.Tensor]:
        """Trainable tensors outside the LoRA adapter (saved in ``embeddings.safetensors``)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad and "lora_" not in n}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config, LoRA adapter (peft format), learned embeddings and a model card.

        Written to a temporary folder and swapped in at the end, so an interrupted save
        never leaves a half-written compressor behind.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            header = {
                "format_version": FORMAT_VERSION,
                "ctxcompress_version": __version__,
                "method": self.method,
                "config": self.config.to_dict(),
                "base_model": {"source": self.base_source, "fingerprint": self.base_fingerprint},
                "fingerprint": self.fingerprint,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
            tensors = {
                n: p.detach().cpu().contiguous() for n, p in self.learned_embeddings().items()
            }
            save_file(tensors, str(tmp / EMBEDDINGS_FILE))
            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(str(tmp / ADAPTER_DIR))
            (tmp / "README.md").write_text(self._model_card())
            old = directory.with_name(f".{directory.name}.old")
            if directory.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        base_model: Any = None,
        tokenizer: Any = None,
        **load_kwargs: Any,
    ) -> Compressor:
        """Rebuild a compressor saved with :meth:`save_pretrained`.

        The base model is reloaded from the recorded source unless ``base_model`` is given;
        either way its fingerprint must match the one the compressor was trained on.
        """
        directory = Path(directory)
        header = read_header(directory)
        if header["method"] != cls.method:
            raise ModelLoadError(
                f"{directory} holds a {header['method']!r} compressor, not {cls.method!r}; "
                "use ctxcompress.load_compressor()."
            )
        config = cls.config_class.from_dict(header["config"], saved=True)
        if isinstance(base_model, BaseModel):
            base = base_model
        else:
            base = load_base_model(
                base_model or header["base_model"]["source"], tokenizer=tokenizer, **load_kwargs
            )
        expected = header["base_model"]["fingerprint"]
        if base.fingerprint != expected:
            raise ModelLoadError(
                f"{directory} was trained on base model {expected} "
                f"({header['base_model']['source']}); the model given is {base.fingerprint}. "
                "Pass the original base model."
            )
        comp = cls(base, config)
        comp._load_weights(directory)
        return comp

    def _load_weights(self, directory: Path) -> None:
        try:
            tensors = load_file(str(directory / EMBEDDINGS_FILE), device=str(self.device))
        except Exception as exc:
            raise CorruptFileError(f"{directory / EMBEDDINGS_FILE} is unreadable: {exc}") from exc
        own = self.learned_embeddings()
        if set(tensors) != set(own):
            raise CorruptFileError(
                f"{directory / EMBEDDINGS_FILE} holds {sorted(tensors)}, expected {sorted(own)}"
            )
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != own[name].shape:
                    raise CorruptFileError(
                        f"{name}: saved shape {tuple(value.shape)} != {tuple(own[name].shape)}"
                    )
                own[name].copy_(value)
        if isinstance(self.model, PeftModel):
            adapter = directory / ADAPTER_DIR / "adapter_model.safetensors"
            try:
                weights = load_file(str(adapter), device=str(self.device))
            except Exception as exc:
                raise CorruptFileError(f"{adapter} is unreadable: {exc}") from exc
            result = set_peft_model_state_dict(self.model, weights)
            if result.unexpected_keys:
                raise CorruptFileError(
                    f"{adapter} has unexpected weights: {result.unexpected_keys[:3]}..."
                )
            missing = [k for k in result.missing_keys if "lora_" in k]
            if missing:
                raise CorruptFileError(f"{adapter} lacks weights: {missing[:3]}...")

    def _model_card(self) -> str:
        return (
            f"# ctxcompress {self.method.upper()} compressor\n\n"
            f"- method: `{self.method}` (ratio {self.config.ratio}x)\n"
            f"- base model: `{self.base_source}` (fingerprint `{self.base_fingerprint}`)\n"
            f"- ctxcompress {__version__}\n\n"
            "```python\nimport ctxcompress as cc\n"
            "comp = cc.load_compressor('path/to/this/folder')\n"
            "ctx = comp.compress('a long document ...')\n"
            "comp.generate(ctx, ['a question?'], max_new_tokens=32)\n```\n"
        )


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    teacher_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum over positions of KL(softmax(teacher/T) || softmax(student/T))`` (Hinton et
    al.'s distillation term; multiply by ``T^2`` to keep its gradient scale).

    Sparse teacher (``teacher_indices`` ``[N, k]``, ``teacher_logits`` ``[N, k]``: its top-k
    logits): the teacher is renormalised over its top k tokens and compared with the
    student's full-vocabulary probabilities there, ``sum_k p_k (log p_k - log q_k)``. That is
    >= 0 and 0 only when the student puts exactly the teacher's top-k probabilities there.
    """
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    if teacher_indices is not None:
        student = student.gather(-1, teacher_indices.to(student.device).long())
    return torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="sum")


def encode_in_length_batches(
    rows: Sequence[Any],
    size: int,
    length: Callable[[Any], int],
    encode: Callable,
    max_padding: float = 0.25,
) -> list[Any]:
    """Run ``encode`` over ``rows`` in batches of at most ``size`` rows of similar length;
    returns one result per row, in the original order. ``encode(batch)`` returns one result
    per row.

    Rows go longest first; a row joins the current batch only if it would be padded by at
    most ``max_padding`` of its own length (a 2-token remainder chunk batched with a 510-token
    chunk would otherwise be padded to 510 and double the encoder's work).
    """
    order = sorted(range(len(rows)), key=lambda i: -length(rows[i]))  # stable
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < size:
            width = length(rows[batches[-1][0]])  # the longest row of the batch
            if width <= (1 + max_padding) * length(rows[i]):
                batches[-1].append(i)
                continue
        batches.append([i])
    results: list[Any] = [None] * len(rows)
    for batch in batches:
        for i, result in zip(batch, encode([rows[i] for i in batch]), strict=True):
            results[i] = result
    return results


def right_padded(rows: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one right-padded ``[B, width]`` id tensor and its 0/1 validity mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        valid[i, : len(r)] = 1
    return ids, valid


def prefill_kv(
    lm: nn.Module, rows: Sequence[Sequence[int]], position_start: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``lm``'s own KV cache of each token row (causal prefill, in batches of ``batch_size``
    right-padded rows, positions from ``position_start``): ``(keys, values)`` of shape
    ``[layers, kv_heads, len(row), head_dim]`` per row (empty for an empty row). Runs the
    model as it is: callers switch adapters off or on."""
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    weight = lm.get_input_embeddings().weight
    empty = weight.new_zeros(cfg.num_hidden_layers, cfg.num_key_value_heads, 0, head_dim)
    out: list[tuple[torch.Tensor, torch.Tensor]] = [(empty, empty)] * len(rows)
    todo = [i for i, r in enumerate(rows) if len(r)]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        ids, valid = right_padded([rows[i] for i in batch])
        positions = torch.arange(ids.shape[1])[None].expand(len(batch), -1) + position_start
        cache = DynamicCache(config=cfg)
        lm.get_decoder()(
            input_ids=ids.to(weight.device),
            attention_mask=valid.to(weight.device),
            position_ids=positions.to(weight.device),
            **cache_kwargs(cache),
            use_cache=True,
        )
        k = torch.stack([layer.keys for layer in cache.layers])  # [layers, B, heads, T, dim]
        v = torch.stack([layer.values for layer in cache.layers])
        for j, i in enumerate(batch):
            n = len(rows[i])
            out[i] = (k[:, j, :, :n], v[:, j, :, :n])
    return out


def gather_cache_entries(
    cache: DynamicCache, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values at ``(rows[i], cols[i])`` of every layer: ``[N, layers, heads, dim]``.

    Gathers layer by layer (a handful of index ops) instead of stacking the whole cache
    first, which would copy every entry of every layer to keep a few."""
    keys = torch.stack([layer.keys[rows, :, cols] for layer in cache.layers], dim=1)
    values = torch.stack([layer.values[rows, :, cols] for layer in cache.layers], dim=1)
    return keys, values


def _offset_rows(
    on_token: Callable[[int, int], None] | None, start: int
) -> Callable[[int, int], None] | None:
    """``on_token`` with a batch's row indices shifted to question indices."""
    if on_token is None:
        return None
    return lambda row, token: on_token(start + row, token)


def _adapter_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Switch off every (peft) adapter injected into ``model``; restore the state on exit."""
    layers = _adapter_layers(model)
    previous = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, was_disabled in zip(layers, previous, strict=True):
            layer.enable_adapters(not was_disabled)


def read_header(directory: Path) -> dict[str, Any]:
    """Read and sanity-check ``ctxcompress.json`` of a saved compressor."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{directory} is not a saved compressor (no {CONFIG_FILE}); create one with "
            "comp.save_pretrained(...)."
        )
    try:
        header = json.loads(path.read_text())
        for key in ("method", "config", "base_model"):
            header[key]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path} is corrupt: {exc}") from exc
    if header.get("format_version", 1) > FORMAT_VERSION:
        raise ModelLoadError(f"{directory} was saved by a newer ctxcompress; upgrade to load it.")
    return header
