"""Decoding against compressed contexts with the frozen decoder.

A decoder row is a :class:`DecoderPrompt`: an optional key/value prefix (a ``kind="kv"``
compressed context), the input embeddings that follow it (for SAC: the learned ``[LM]``
embedding and the question tokens; for embedding methods the soft prompt comes first) and
their position ids (for SAC the question starts at L: the decoder continues after the
original context, whatever the compressed length).

Rows are left-padded so that every row's last prompt token sits in the last column; prefixes
of different lengths are left-padded too, and an attention mask hides the padding. Positions
are passed explicitly, which is why this is a small loop of its own rather than
``model.generate`` (which derives positions from the attention mask and would place the
question at C instead of L).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from .context import CompressedContext
from .models import cache_kwargs, output_cache
from .shared_prefix import own_tokens_mask, shared_prefix_attention, supports
from .windows import decoder_mask, local_window, new_cache


@dataclass
class DecoderPrompt:
    """One decoder row: a ``kv_context`` (a ``kind="kv"`` context read as the KV cache, or
    None), then ``embeds`` [T, H] at ``positions`` [T]."""

    kv_context: CompressedContext | None
    embeds: torch.Tensor
    positions: torch.Tensor


@dataclass
class Generation:
    """One decoded answer: its text, the generated token ids (without EOS) and why it ended
    (``"eos"``, ``"stop"`` for a stop string, or ``"length"`` at ``max_new_tokens``)."""

    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class DecoderBatch:
    """Padded tensors for one decoder forward pass."""

    inputs_embeds: torch.Tensor  # [B, T, H]
    position_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, P + T], 1 = real
    cache: DynamicCache | None
    prompt_lengths: list[int]
    next_positions: torch.Tensor  # [B], position id of the first generated token
    key_positions: torch.Tensor  # [B, P + T], the position of every key (padding: 0)


def build_decoder_batch(model: PreTrainedModel, prompts: Sequence[DecoderPrompt]) -> DecoderBatch:
    """Pad and stack decoder rows (see module docstring for the layout)."""
    device = prompts[0].embeds.device
    batch = len(prompts)
    lengths = [int(p.embeds.shape[0]) for p in prompts]
    width = max(lengths)
    hidden = prompts[0].embeds.shape[-1]
    embeds = prompts[0].embeds.new_zeros(batch, width, hidden)
    positions = torch.zeros(batch, width, dtype=torch.long, device=device)
    prompt_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    for row, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        embeds[row, width - n :] = p.embeds
        positions[row, width - n :] = p.positions
        prompt_mask[row, width - n :] = 1
    cache, context_mask, context_positions = _stack_kv_contexts(model, prompts, device)
    attention_mask = (
        prompt_mask if context_mask is None else torch.cat([context_mask, prompt_mask], 1)
    )
    key_positions = (
        positions if context_mask is None else torch.cat([context_positions, positions], 1)
    )
    next_positions = positions[:, -1] + 1
    return DecoderBatch(
        embeds, positions, attention_mask, cache, lengths, next_positions, key_positions
    )


def _stack_kv_contexts(model, prompts, device):
    contexts = [p.kv_context for p in prompts]
    if all(c is None for c in contexts):
        return None, None, None
    # A windowed model's own cache would drop entries by index (windows.py): keep them all.
    config = model.config if local_window(model.config) is None else None
    if any(c is None or c.kind != "kv" for c in contexts):  # an empty context has none
        raise ValueError("either every decoder row has a KV context or none has")
    first = contexts[0]
    if all(c is first for c in contexts):  # one context, many questions: share by expansion
        cache = first.to_dynamic_cache(len(prompts), config=config)
        mask = torch.ones(len(prompts), first.compressed_length, dtype=torch.long, device=device)
        at = _entry_positions(first, device)[None].expand(len(prompts), -1)
        return cache, mask, at
    width = max(c.compressed_length for c in contexts)
    n_layers, heads, _, dim = first.keys.shape
    keys = first.keys.new_zeros(n_layers, len(contexts), heads, width, dim)
    values = torch.zeros_like(keys)
    mask = torch.zeros(len(contexts), width, dtype=torch.long, device=device)
    at = torch.zeros(len(contexts), width, dtype=torch.long, device=device)
    for row, c in enumerate(contexts):
        n = c.compressed_length
        keys[:, row, :, width - n :] = c.keys
        values[:, row, :, width - n :] = c.values
        mask[row, width - n :] = 1
        at[row, width - n :] = _entry_positions(c, device)
    cache = DynamicCache(ddp_cache_data=list(zip(keys, values, strict=True)), config=config)
    return cache, mask, at


def _entry_positions(context: CompressedContext, device: torch.device) -> torch.Tensor:
    """The positions the context's entries stand for (a context without them: 0, 1, ...)."""
    if context.positions is not None:
        return context.positions.to(device)
    return torch.arange(context.compressed_length, device=device)


class ReservedLayer(DynamicLayer):
    """A :class:`~transformers.cache_utils.DynamicLayer` that writes new keys/values into a
    buffer reserved for ``capacity`` tokens and returns views of its filled part.

    ``DynamicLayer`` concatenates at every step, copying the whole cache each time: 73 % of
    the time of 16 questions decoded in one batch against a 514-entry SAC context on CPU went
    into those copies. Grows (once, by copying) if a write would pass the reservation.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        filled = self.get_seq_length()
        needed = filled + key_states.shape[-2]
        if not self._holds_own_views() or needed > self._buffers[0].shape[-2]:
            self._reserve(key_states, value_states, filled, max(self.capacity, needed))
        keys, values = self._buffers
        keys[..., filled:needed, :] = key_states
        values[..., filled:needed, :] = value_states
        self.keys, self.values = keys[..., :needed, :], values[..., :needed, :]
        self.is_initialized = True
        return self.keys, self.values

    def _holds_own_views(self) -> bool:
        """False before the first write or after HF replaced ``keys`` (reorder, select)."""
        return (
            self._buffers is not None
            and self.keys is not None
            and self.keys.data_ptr() == self._buffers[0].data_ptr()
            and self.keys.shape[:2] == self._buffers[0].shape[:2]
        )

    def _reserve(self, key_states, value_states, filled: int, capacity: int) -> None:
        batch, heads, _, dim = key_states.shape
        keys = key_states.new_empty(batch, heads, capacity, dim)
        values = value_states.new_empty(batch, value_states.shape[1], capacity, dim)
        if filled:
            keys[..., :filled, :] = self.keys
            values[..., :filled, :] = self.values
        self.dtype, self.device = key_states.dtype, key_states.device
        self._buffers = (keys, values)


def reserve_cache(
    cache: DynamicCache | None, model: PreTrainedModel, capacity: int
) -> DynamicCache:
    """``cache`` (or a new empty one) with every full-attention layer a :class:`ReservedLayer`
    holding ``capacity`` tokens; other layer kinds (sliding windows) stay as they are."""
    cache = cache if cache is not None else new_cache(model.config)
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            reserved = ReservedLayer(capacity)
            if layer.get_seq_length() > 0:
                reserved.update(layer.keys, layer.values)
            cache.layers[index] = reserved
    return cache


def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[DecoderPrompt],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    stop_strings: Sequence[str] = (),
    on_token: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Greedy decoding for a batch of decoder rows; returns one :class:`Generation` per row.

    A row stops at any of ``eos_token_ids`` (not included in the answer), at the first of
    ``stop_strings`` (cut before it), or after ``max_new_tokens`` tokens.

    ``on_token(row, token_id)``, if given, is called as each token is appended to a row's
    answer (in the order of generation; EOS is never reported). It sees every token of
    ``Generation.token_ids``; the final text may still drop a stop string and the whitespace
    at either end. It does not change what is generated.
    """
    shared = _shared_prefix(model, prompts)
    if shared is not None:  # one context, many questions: read it once per step
        prompts = [DecoderPrompt(None, p.embeds, p.positions) for p in prompts]
    batch = build_decoder_batch(model, prompts)
    embed = model.get_input_embeddings()
    eos = torch.tensor(sorted(set(eos_token_ids)), device=batch.inputs_embeds.device)
    rows = len(prompts)
    generated: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    reasons = ["length"] * rows
    key_valid = batch.attention_mask  # [B, S]: 1 for every real key/value entry so far
    key_positions = batch.key_positions  # [B, S]: their positions

    def forward(inputs_embeds, positions, cache, **extra):
        count, dtype = inputs_embeds.shape[1], inputs_embeds.dtype
        if shared is not None:
            mask = own_tokens_mask(key_valid, count)
        else:  # by position in windowed layers (windows.py)
            mask = decoder_mask(model.config, key_valid, count, positions, key_positions, dtype)
        return model(
            inputs_embeds=inputs_embeds,
            position_ids=positions,
            attention_mask=mask,
            **cache_kwargs(cache),
            use_cache=True,
            **extra,
        )

    capacity = key_valid.shape[1] + max_new_tokens  # prefix + prompt + every new token
    with contextlib.ExitStack() as stack:
        if shared is not None:
            stack.enter_context(shared_prefix_attention(model, shared))
        out = forward(
            batch.inputs_embeds,
            batch.position_ids,
            reserve_cache(batch.cache, model, capacity),
            logits_to_keep=1,
        )
        positions, cache = batch.next_positions, output_cache(out)
        for step in range(max_new_tokens):
            next_tokens = out.logits[:, -1].argmax(-1)
            is_eos = torch.isin(next_tokens, eos).tolist()
            for row, token in enumerate(next_tokens.tolist()):
                if finished[row]:
                    continue
                if is_eos[row]:
                    finished[row], reasons[row] = True, "eos"
                    continue
                generated[row].append(token)
                if on_token is not None:
                    on_token(row, token)
                if stop_strings:
                    text = tokenizer.decode(generated[row], skip_special_tokens=True)
                    if _first_stop(text, stop_strings) is not None:
                        finished[row], reasons[row] = True, "stop"
            if all(finished) or step == max_new_tokens - 1:
                break
            key_valid = torch.cat([key_valid, key_valid.new_ones(rows, 1)], 1)
            key_positions = torch.cat([key_positions, positions[:, None]], 1)
            out = forward(embed(next_tokens[:, None]), positions[:, None], cache)
            cache, positions = output_cache(out), positions + 1
    answers = []
    for row in range(rows):
        text = tokenizer.decode(generated[row], skip_special_tokens=True)
        cut = _first_stop(text, stop_strings)
        text = (text if cut is None else text[:cut]).strip()
        answers.append(Generation(text, generated[row], reasons[row]))
    return answers


def _shared_prefix(
    model: PreTrainedModel, prompts: Sequence[DecoderPrompt]
) -> CompressedContext | None:
    """The one KV context every row reads, when shared-prefix attention applies to it."""
    first = prompts[0].kv_context
    if len(prompts) < 2 or first is None or first.kind != "kv":
        return None
    if any(p.kv_context is not first for p in prompts) or not supports(model):
        return None
    return first


def _first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else None
