"""Sliding-window (local) attention layers around compressed contexts (issue 23).

Some models restrict some layers to a local window: Gemma 3 has 5 local layers (window 512)
to 1 global; Mistral v0.1 and Phi-3-mini-4k window every layer. In the uncompressed model a
local layer lets a query at position ``p`` see the keys at positions ``k`` with
``p - k < window`` (transformers' ``sliding_window_overlay``; ``|p - k| < window`` for
bidirectional encoders, its ``_bidirectional_window_overlay``).

**The rule here: a local layer sees an entry when its position is within the window of the
query's position** — by position, not by index. A compressed context's entries sit at the
positions of the tokens they stand for (SAC anchors) or at positions their method assigns
(memory tokens), so a local layer sees of a compressed context exactly the entries whose
positions an uncompressed local layer would see; with every token kept (SAC at r=1) that is the
uncompressed model itself, logit for logit (tested per architecture). Global layers see
everything the method's own mask allows.

Transformers' own masks count by index (an entry's column in the cache), which is the
position only for plain text, and its sliding caches keep the last ``window`` columns; so for
a windowed model ctxcompress builds every 4-D mask itself (a ``{layer type: mask}`` dict for
models that mix layer types) and uses caches that keep every entry (:func:`new_cache`).
Models without local layers (or whose window covers all their positions) are untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from .masks import for_backend

FULL, SLIDING = "full_attention", "sliding_attention"


def local_window(config: Any) -> int | None:
    """The window of the model's local layers, or ``None`` when every layer is global (no
    window, or one at least as long as the model's positions)."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if not getattr(config, "use_sliding_window", True):  # Qwen2's switch
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and SLIDING not in types:
        return None
    positions = getattr(config, "max_position_embeddings", None) or 2**31 - 1
    return int(window) if int(window) < int(positions) else None


def mixes_layer_types(config: Any) -> bool:
    """Whether the model takes a ``{layer type: mask}`` dict (it has both kinds of layer)."""
    types = getattr(config, "layer_types", None) or []
    return SLIDING in types and FULL in types


def new_cache(config: Any, **kwargs: Any) -> DynamicCache:
    """A ``DynamicCache`` for ``config``'s model that keeps every entry of every layer (a
    windowed model's own cache would drop what lies outside a local layer's window by index,
    and a compressed context's entries are not in index order of position)."""
    if local_window(config) is None:
        return DynamicCache(config=config, **kwargs)
    return DynamicCache(**kwargs)


def attention_mask(
    config: Any,
    allowed: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What to pass a model as ``attention_mask`` for the boolean ``allowed``
    ``[B, 1, Q, K]`` ("may attend" by the method's rule), with each query's and key's
    position (``[B, Q]``, ``[B, K]``): ``allowed`` itself for global models; for windowed
    ones also restricted to ``|q - k| < window`` in the local layers (a dict by layer type
    when the model mixes them). Converted for the attention backend (:func:`for_backend`)."""
    implementation = config._attn_implementation
    window = local_window(config)
    if window is None:
        return for_backend(allowed, implementation, dtype)
    distance = (query_positions[:, None, :, None] - key_positions[:, None, None, :]).abs()
    local = allowed & (distance < window)
    # A query whose window holds no allowed key (a padded row) keeps its global row: no row
    # may be empty (NaN), and padded rows are never read.
    local = torch.where(local.any(-1, keepdim=True), local, allowed)
    if not mixes_layer_types(config):
        return for_backend(local, implementation, dtype)
    return {
        FULL: for_backend(allowed, implementation, dtype),
        SLIDING: for_backend(local, implementation, dtype),
    }


def decoder_mask(
    config: Any,
    key_valid: torch.Tensor,
    query_count: int,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The decoder's mask for the last ``query_count`` of ``K`` keys as queries (context
    entries, then prompt / generated tokens, as the cache holds them): causal by column among
    the queries, every valid earlier key visible, windowed by position (:func:`attention_mask`).
    ``key_valid``: ``[B, K]`` (1 = a real entry). A global model gets ``key_valid`` itself,
    which transformers extends causally."""
    if local_window(config) is None:
        return key_valid
    keys = key_valid.shape[1]
    first = keys - query_count
    column = torch.arange(keys, device=key_valid.device)
    query_column = first + torch.arange(query_count, device=key_valid.device)
    causal = column[None, :] <= query_column[:, None]  # [Q, K]
    allowed = key_valid.bool()[:, None, None, :] & causal[None, None]
    return attention_mask(config, allowed, query_positions, key_positions, dtype)
