"""The method contract every compressor implements, and the mechanics they share.

A method subclasses :class:`Compressor`, declares its config dataclass and implements
:meth:`Compressor.encode_ids` (token ids -> :class:`CompressedContext` list, with gradients).
This file holds the contract: config, learned parameters, text -> ids, the attention sink,
compression and the decoder-prompt layout. The rest lives beside it, one job per module:
``config`` (the shared options), ``lora`` (the encoder adapter and the frozen decoder),
``loss`` (the training loss), ``answering`` (``plan`` / ``answer`` / ``generate``),
``persistence`` (``save_pretrained`` / ``from_pretrained``) and ``encoding`` (batching and
KV helpers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from peft import PeftModel
from torch import nn

from ..context import CompressedContext
from ..errors import ContextTooLongError, InvalidInputError, ModelLoadError
from ..generation import DecoderPrompt, build_decoder_batch
from ..models import BaseModel, cache_kwargs, max_positions
from ..positions import sink_count
from ..windows import decoder_mask
from .answering import AnsweringMixin
from .assembly import AssemblyMixin
from .budget import BudgetMixin
from .config import LEGACY_DEFAULTS, CompressorConfig
from .encoding import prefill_kv
from .extension import tail_ids
from .lora import EncoderAdapterMixin, inject_lora
from .loss import TrainingLossMixin
from .persistence import PersistenceMixin

_TOKENIZER_LOCK = threading.Lock()
SINK_CACHE_SIZE = 32
"""Distinct sink rows whose frozen KV a compressor keeps (outside training): with the usual
BOS + context prefix every context starts with the same sink tokens, so compression skips
that prefill altogether (a ~5-token forward pass, 10-15 % of compressing a paragraph)."""


class Compressor(
    EncoderAdapterMixin,
    TrainingLossMixin,
    AnsweringMixin,
    PersistenceMixin,
    BudgetMixin,
    AssemblyMixin,
    nn.Module,
):
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
        self.lm = lm
        # Injects the LoRA layers into `lm` in place; `self.model` wraps the same modules.
        self.model: nn.Module = inject_lora(lm, config)
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
        self.versions: dict[str, str] = {}
        """A shipped compressor's versions (fingerprint -> ``"embedded:<name> version N"``,
        ``shipped.versions``): a context an earlier version made is refused saying so."""
        self._merge_encoder = False
        self._merged_cache: tuple[tuple[int, ...], list[nn.Parameter]] | None = None
        self._sink_cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._sink_lock = threading.Lock()
        self._frozen_probe: nn.Parameter | None = None
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

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters training updates (LoRA weights and learned embeddings), by name.

        This compressor's LoRA weights count whether or not the adapter is switched on at
        the moment: peft's switch also toggles their ``requires_grad``, and the fingerprint
        (read by the service's request threads while the model thread decodes with the
        adapter off) must not depend on it."""
        own_lora = isinstance(self.model, PeftModel)
        return {
            n: p
            for n, p in self.named_parameters()
            if p.requires_grad or (own_lora and "lora_" in n)
        }

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

    # ------------------------------------------------------------------ text <-> ids
    def _encode(self, text: str) -> list[int]:
        # Encoding may reconfigure a fast tokenizer's truncation/padding (a mutable borrow in
        # its Rust core: "Already borrowed" when two threads meet there). The service encodes
        # on request threads and in its model thread, so every encode takes one lock.
        with _TOKENIZER_LOCK:
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids (special tokens dropped; decoding only reads the
        tokenizer, so it needs no lock)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def context_ids(self, text: str) -> list[int]:
        """Token ids of one context: ``BOS + context_prefix + text`` (METHODS.md §1)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"a context must be a str, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInputError("a context is empty (or only whitespace): nothing to compress")
        return self._bos() + self._encode(self.config.context_prefix + text)

    def context_prefix_ids(self) -> list[int]:
        """The ids every tokenized context starts with: BOS (if used) + ``context_prefix``."""
        return self._bos() + self._encode(self.config.context_prefix)

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if self.config.add_bos and bos is not None else []

    def question_ids(self, question: str) -> list[int]:
        """Token ids of the decoder prompt for one question (``question_template``)."""
        if not isinstance(question, str):
            raise InvalidInputError(f"a question must be a str, got {type(question).__name__}")
        if not question.strip():
            raise InvalidInputError("a question is empty")
        return self._encode(self.config.question_template.format(question=question))

    @property
    def max_positions(self) -> int:
        """Positions the base model has (its context window)."""
        return max_positions(self.lm)

    @property
    def max_context_tokens(self) -> int:
        """The longest tokenized context (BOS and prefix included) :meth:`compress` accepts."""
        return self.max_positions - self.config.position_start

    def _check_length(self, length: int) -> None:
        if length > self.max_context_tokens:
            raise ContextTooLongError(
                f"the context has {length} tokens, but the base model has only "
                f"{self.max_positions} "
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
        return [sink_count(min(len(ids), cfg.chunk_size), self.ratio, k) for ids in contexts]

    def sink_kv(self, contexts: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The frozen model's own keys and values ``[layers, kv_heads, s, head_dim]`` of each
        context's sink tokens (a causal prefill of its first s tokens, adapter off), at their
        positions from ``position_start``. No gradients: nothing trainable reaches them."""
        rows = [list(ids[:n]) for ids, n in zip(contexts, self.sink_lengths(contexts), strict=True)]
        if self.training or torch.is_grad_enabled() or torch.is_autocast_enabled(self.device.type):
            return self._prefill_sinks(rows)
        # At inference the same sink row always gets the same KV from the same frozen
        # weights: keep it, keyed by the row and by what the weights are right now (a
        # bfloat16 copy swapped in, another device or dtype: another key).
        weight = self._frozen_linear_weight()
        state = (weight.data_ptr(), weight.dtype, weight.device)
        keys = [(tuple(row), *state) for row in rows]
        with self._sink_lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._sink_cache))
        computed = self._prefill_sinks([list(k[0]) for k in missing]) if missing else []
        with self._sink_lock:
            self._sink_cache.update(zip(missing, computed, strict=True))
            out = []
            for key in keys:
                out.append(self._sink_cache[key])
                self._sink_cache.move_to_end(key)
            while len(self._sink_cache) > SINK_CACHE_SIZE:
                self._sink_cache.popitem(last=False)
        return out

    def _prefill_sinks(self, rows: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with torch.no_grad(), self.frozen_mode():
            return prefill_kv(
                self.lm, rows, self.config.position_start, self.config.encoder_batch_size
            )

    def _frozen_linear_weight(self) -> nn.Parameter:
        """One frozen linear weight of the base model (never a LoRA factor): its storage says
        whether the weights the sink cache was filled with are still the ones in place."""
        if self._frozen_probe is None:
            self._frozen_probe = next(
                m.weight
                for name, m in self.lm.named_modules()
                if isinstance(m, nn.Linear) and "lora_" not in name
            )
        return self._frozen_probe

    def sink_positions(self, length: int) -> torch.Tensor:
        """Position ids of ``length`` sink entries."""
        return torch.arange(length) + self.config.position_start

    # ------------------------------------------------------------------ compression
    def encode_ids(self, contexts: Sequence[Sequence[int]]) -> list[CompressedContext]:
        """Compress tokenized contexts, keeping gradients. Implemented by each method."""
        raise NotImplementedError

    def compress(
        self,
        texts: str | Sequence[str],
        *,
        budget: int | None = None,
        keep_tail: bool = False,
    ) -> CompressedContext | list[CompressedContext]:
        """Compress one text (-> one context) or a list of texts (-> list, encoded together).

        ``budget``: at most this many entries per context; the ratio is chosen per document
        (:meth:`ratio_for_budget`) and recorded in ``ctx.meta["ratio"]``. ``keep_tail``:
        record the last partial chunk's token ids, so that :meth:`extend` grows the context
        exactly as if the whole text had been compressed (SAC; see :mod:`.extension`).
        """
        single = isinstance(texts, str)
        items = [texts] if single else texts
        if not single and (not isinstance(items, Sequence) or not items):
            raise InvalidInputError("compress() takes a str or a non-empty list of str")
        ids = [self.context_ids(t) for t in items]
        contexts = self.compress_ids(ids, budget=budget, keep_tail=keep_tail)
        return contexts[0] if single else contexts

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode and ``inference_mode`` for the block, back to training mode after it if
        the compressor was training. Switched only when needed: ``eval()`` walks every module
        of the model (~40 ms a call for SmolLM2's 30 layers, 10 % of compressing a paragraph)."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if was_training:
                self.train()

    def compress_ids(
        self,
        contexts: Sequence[Sequence[int]],
        *,
        budget: int | None = None,
        keep_tail: bool = False,
    ) -> list[CompressedContext]:
        """Compress tokenized contexts for inference (no gradients, adapter active); with a
        ``budget``, each at the ratio that keeps it within that many entries; ``keep_tail``
        as in :meth:`compress`."""
        if keep_tail:
            self._check_extensible()
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
        if budget is None:
            ratios = [self.ratio] * len(contexts)
        else:
            ratios = [self.ratio_for_budget(len(ids), budget) for ids in contexts]
        out: list[CompressedContext | None] = [None] * len(contexts)
        with self.inference():
            for ratio in sorted(set(ratios)):  # documents of one ratio encoded together
                rows = [i for i, r in enumerate(ratios) if r == ratio]
                with self.at_ratio(ratio):
                    encoded = self.encode_ids([contexts[i] for i in rows])
                for i, ctx in zip(rows, encoded, strict=True):
                    if budget is not None:
                        ctx.meta["budget"] = budget
                    if keep_tail:
                        ctx.meta["tail_ids"] = tail_ids(contexts[i], self.config.chunk_size)
                    out[i] = ctx.detach()
        return out  # type: ignore[return-value]

    def _new_context(self, original_length: int, meta: dict[str, Any] | None = None, **tensors):
        return CompressedContext(
            kind=self.context_kind,
            method=self.method,
            base_model=self.base_fingerprint,
            compressor=self.fingerprint,
            original_length=original_length,
            meta={"ratio": self.ratio, **(meta or {})},
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
        self.check_context(ctx)
        return ctx

    def check_context(self, ctx: CompressedContext) -> None:
        """Refuse a context another method, base model or trained compressor made (a
        shipped compressor's earlier version says which version made it)."""
        ctx.check_compatible(
            method=self.method,
            base_model=self.base_fingerprint,
            compressor=self.fingerprint,
            versions=self.versions,
        )

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
        opener = self.decoder_opener("lm")
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

    def decoder_opener(self, task: str) -> torch.Tensor | None:
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
        opener = self.decoder_opener(task)
        if opener is not None:
            parts.insert(0, opener.to(self.dtype))
        length = sum(int(p.shape[0]) for p in parts)
        start = self.first_decoder_position(ctx)
        positions = torch.arange(start, start + length, device=self.device)
        kv_context: CompressedContext | None = ctx if ctx.compressed_length else None
        if ctx.kind == "embeds":
            kv_context = None
            if ctx.compressed_length:
                parts.insert(0, ctx.embeds.to(self.dtype))
                positions = torch.cat([ctx.positions.to(self.device), positions])
        return DecoderPrompt(kv_context=kv_context, embeds=torch.cat(parts), positions=positions)

    def decoder_hidden(
        self,
        contexts: Sequence[CompressedContext],
        prompt_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
        *,
        all_layers: bool = False,
    ) -> torch.Tensor:
        """Frozen decoder's last hidden states for ``[LM] + prompt`` after each context.

        Differentiable (gradients flow into the contexts). Returns ``[B, T, hidden]``; rows
        are left-padded, so the last ``n = k + len(prompt_ids[b])`` columns of row b are its
        inputs (``k``: the rows of :meth:`decoder_opener`) and column ``-n + i`` predicts the
        token after input i. No LM head is applied: training computes logits only where
        there are labels. With ``all_layers`` the output of every decoder layer, stacked:
        ``[layers, B, T, hidden]`` (the last one is the final-normed state above), what
        hidden-state distillation compares (METHODS.md §7).
        """
        tasks = tasks or ["lm"] * len(contexts)
        with self.decoder_mode():
            rows = [
                self.decoder_prompt(c, ids, task)
                for c, ids, task in zip(contexts, prompt_ids, tasks, strict=True)
            ]
            batch = build_decoder_batch(self.lm, rows)
            mask = decoder_mask(  # by position in windowed layers (windows.py)
                self.lm.config,
                batch.attention_mask,
                batch.inputs_embeds.shape[1],
                batch.position_ids,
                batch.key_positions,
                batch.inputs_embeds.dtype,
            )
            out = self.backbone(
                inputs_embeds=batch.inputs_embeds,
                position_ids=batch.position_ids,
                attention_mask=mask,
                **cache_kwargs(batch.cache),
                use_cache=False,
                output_hidden_states=all_layers,
            )
        return torch.stack(out.hidden_states[1:]) if all_layers else out.last_hidden_state

    def decoder_forward(
        self,
        contexts: Sequence[CompressedContext],
        prompt_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Decoder logits ``[B, T, vocab]`` (layout as :meth:`decoder_hidden`)."""
        hidden = self.decoder_hidden(contexts, prompt_ids, tasks)
        return self.lm.get_output_embeddings()(hidden)
