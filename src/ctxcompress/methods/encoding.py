"""Batching and KV helpers the encoders share: length-bucketed batches, right padding, a
model's own KV prefill and gathering cache entries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ..masks import padded_chunk_mask
from ..models import cache_kwargs
from ..windows import attention_mask, local_window, new_cache

MAX_BATCH_TOKENS = 1024
"""The most (padded) tokens one encoder forward pass takes. On a CPU a batch buys nothing
per token — the matmuls of one 180-token row already fill the cores — while padding and the
mask it needs cost: the frozen model's prefill of 16 SQuAD contexts took 4.5 ms a token in
one batch of 16 and 1.9-2.0 in batches of 1-4 (2 threads, SmolLM2-135M); 4 HotpotQA contexts
(~1,450 tokens) 3.8-4.0 ms a token batched, 2.1 one at a time. A speed bound, not a modelling
choice: the outputs are the same up to float rounding."""


def length_batches(
    lengths: Sequence[int],
    size: int,
    max_padding: float = 0.25,
    max_tokens: int | None = MAX_BATCH_TOKENS,
) -> list[list[int]]:
    """Indices of rows of these ``lengths`` in batches of at most ``size`` rows of similar
    length, longest first.

    A row joins the current batch only if it would be padded by at most ``max_padding`` of
    its own length (a 2-token remainder chunk batched with a 510-token chunk would otherwise
    be padded to 510 and double the encoder's work) and the batch stays within
    ``max_tokens`` padded tokens (:data:`MAX_BATCH_TOKENS`; None: no bound).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < size:
            width = lengths[batches[-1][0]]  # the longest row of the batch
            fits = max_tokens is None or (len(batches[-1]) + 1) * width <= max_tokens
            if fits and width <= (1 + max_padding) * lengths[i]:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def encode_in_length_batches(
    rows: Sequence[Any],
    size: int,
    length: Callable[[Any], int],
    encode: Callable,
    max_padding: float = 0.25,
    max_tokens: int | None = MAX_BATCH_TOKENS,
) -> list[Any]:
    """Run ``encode`` over ``rows`` in :func:`length_batches`; returns one result per row,
    in the original order. ``encode(batch)`` returns one result per row."""
    results: list[Any] = [None] * len(rows)
    lengths = [length(r) for r in rows]
    for batch in length_batches(lengths, size, max_padding, max_tokens):
        for i, result in zip(batch, encode([rows[i] for i in batch]), strict=True):
            results[i] = result
    return results


def packed_rows(lengths: Sequence[int], capacity: int, short: int) -> list[list[int]]:
    """Which items share a row: each item shorter than ``short`` rides along in the first
    row (longest items first) with room for it within ``capacity`` tokens; every other
    item has a row of its own. Returns each row's item indices, in row order.

    A separate forward pass costs a fixed overhead whatever its length (a whole pass of the
    model's layers on a 2-token remainder chunk, e.g. 512 = 510 + 2): packed into another
    chunk's row behind a block-diagonal mask (:func:`~ctxcompress.masks.padded_chunk_mask`
    ``segments``) it costs only its own tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        if lengths[i] < short:
            for r, total in enumerate(used):
                if total + lengths[i] <= capacity:
                    rows[r].append(i)
                    used[r] += lengths[i]
                    break
            else:
                rows.append([i])
                used.append(lengths[i])
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


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
    """``lm``'s own KV cache of each token row (causal prefill, in batches of at most
    ``batch_size`` right-padded rows of similar length within :data:`MAX_BATCH_TOKENS`,
    positions from ``position_start``): ``(keys, values)`` of shape
    ``[layers, kv_heads, len(row), head_dim]`` per row (empty for an empty row). Runs the
    model as it is: callers switch adapters off or on."""
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    weight = lm.get_input_embeddings().weight
    empty = weight.new_zeros(cfg.num_hidden_layers, cfg.num_key_value_heads, 0, head_dim)
    out: list[tuple[torch.Tensor, torch.Tensor]] = [(empty, empty)] * len(rows)
    todo = [i for i, r in enumerate(rows) if len(r)]
    # Similar lengths together, within MAX_BATCH_TOKENS padded tokens a pass.
    for chosen in length_batches([len(rows[i]) for i in todo], batch_size):
        batch = [todo[j] for j in chosen]
        ids, valid = right_padded([rows[i] for i in batch])
        positions = torch.arange(ids.shape[1])[None].expand(len(batch), -1) + position_start
        cache = new_cache(cfg)
        mask = valid.to(weight.device)
        if local_window(cfg) is not None:  # windowed layers: by position (windows.py)
            allowed = padded_chunk_mask(mask.bool(), "causal")
            at = positions.to(weight.device)
            mask = attention_mask(cfg, allowed, at, at, weight.dtype)
        lm.get_decoder()(
            input_ids=ids.to(weight.device),
            attention_mask=mask,
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
