"""Shared-prefix ("cascade") attention: many questions against one compressed context.

Batched decoding normally gives every row its own copy of the context's keys/values, so each
decoding step reads the context once per question: with 16 questions against a 2,000-entry
SAC context on CPU, a batched call was only 2.2x faster than 16 single calls. Here the
context stays a single ``[kv_heads, C, head_dim]`` tensor per layer, read once per step for
all rows, and each row's own tokens (question, answer so far) live in an ordinary cache:

    out = merge( attention(q, context K/V),  attention(q, own K/V, mask) )

merged exactly with the two parts' log-sum-exps (the same algebra as FlashAttention's
blockwise softmax and FlashInfer's cascade attention). Grouped-query heads are handled by
grouping queries, never by copying keys.

The attention function is registered with transformers' ``AttentionInterface`` under
:data:`SHARED_PREFIX_ATTENTION` and is switched on per call by :func:`shared_prefix_attention`
(the model's attention implementation is swapped for the duration and restored). Masks are
passed as explicit 4-D boolean tensors over the rows' own tokens, so transformers' mask
builders are not involved. Only for model families whose attention is plain softmax attention
over all positions (no sliding window, no soft-capping, no sinks): :func:`supports`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from transformers import AttentionInterface, PreTrainedModel

from .context import CompressedContext
from .windows import local_window

SHARED_PREFIX_ATTENTION = "ctxcompress_shared_prefix"
SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "phi3"})

# Per layer: the shared context's keys and values, [kv_heads, C, head_dim].
_PREFIX: ContextVar[list[tuple[torch.Tensor, torch.Tensor]] | None] = ContextVar(
    "ctxcompress_shared_prefix", default=None
)


def supports(model: PreTrainedModel) -> bool:
    """Whether :func:`shared_prefix_attention` gives this model's exact attention."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return False
    if config._attn_implementation not in ("sdpa", "eager"):
        return False
    return local_window(config) is None  # windowed layers: the copies path


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Softmax attention over [shared prefix, own tokens]; returns ``[B, T, heads, dim]``."""
    prefix = _PREFIX.get()
    if prefix is None:
        raise RuntimeError("shared-prefix attention used outside shared_prefix_attention()")
    if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.ndim != 4:
        raise RuntimeError("shared-prefix attention needs an explicit 4-D boolean mask")
    prefix_keys, prefix_values = prefix[module.layer_idx]
    batch, q_heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    q = query.float() * scale  # scaled once here rather than every score

    # The shared prefix, read once for every row: queries grouped by their key/value head.
    grouped = q.reshape(batch, kv_heads, group, length, dim).permute(1, 0, 2, 3, 4)
    grouped = grouped.reshape(kv_heads, batch * group * length, dim)
    scores = torch.matmul(grouped, prefix_keys.transpose(-1, -2))
    lse_prefix = torch.logsumexp(scores, dim=-1, keepdim=True)
    out_prefix = torch.matmul(torch.softmax(scores, dim=-1), prefix_values)
    out_prefix = out_prefix.view(kv_heads, batch, group, length, dim).permute(1, 0, 2, 3, 4)
    lse_prefix = lse_prefix.view(kv_heads, batch, group, length, 1).permute(1, 0, 2, 3, 4)

    # Each row's own tokens, under the mask ([B, 1, T, S] -> broadcast over head groups).
    own = q.reshape(batch, kv_heads, group * length, dim)
    scores = torch.matmul(own, key.float().transpose(-1, -2))
    scores = scores.view(batch, kv_heads, group, length, -1)
    scores = scores.masked_fill(~attention_mask[:, :, None], float("-inf"))
    lse_own = torch.logsumexp(scores, dim=-1, keepdim=True)  # -inf where nothing is visible
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a padded query sees nothing
    out_own = torch.matmul(weights.view(batch, kv_heads, group * length, -1), value.float()).view(
        batch, kv_heads, group, length, dim
    )

    top = torch.maximum(lse_prefix, lse_own)
    w_prefix, w_own = torch.exp(lse_prefix - top), torch.exp(lse_own - top)
    out = (w_prefix * out_prefix + w_own * out_own) / (w_prefix + w_own)
    out = out.reshape(batch, q_heads, length, dim).transpose(1, 2)
    return out.to(query.dtype).contiguous(), None


AttentionInterface.register(SHARED_PREFIX_ATTENTION, _attention)


@contextlib.contextmanager
def shared_prefix_attention(model: PreTrainedModel, context: CompressedContext) -> Iterator[None]:
    """Within the block, ``model`` attends to ``context`` (a ``kind="kv"`` compressed
    context) before every row's own tokens; pass 4-D boolean masks over the own tokens."""
    if not supports(model):
        raise ValueError(f"shared-prefix attention does not support {model.config.model_type}")
    # Stored in float32 once (the attention arithmetic is float32), not converted per step.
    device = model.get_input_embeddings().weight.device
    layers = [
        (k.to(device=device, dtype=torch.float32), v.to(device=device, dtype=torch.float32))
        for k, v in zip(context.keys, context.values, strict=True)
    ]
    token = _PREFIX.set(layers)
    previous = model.config._attn_implementation
    model.config._attn_implementation = SHARED_PREFIX_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        _PREFIX.reset(token)


def own_tokens_mask(key_valid: torch.Tensor, queries: int) -> torch.Tensor:
    """``[B, 1, queries, S]`` boolean mask: the last ``queries`` of S own tokens attend
    causally to the valid (non-padding) ones."""
    total = key_valid.shape[1]
    query_index = torch.arange(total - queries, total, device=key_valid.device)[:, None]
    causal = torch.arange(total, device=key_valid.device)[None, :] <= query_index
    return (causal[None] & key_valid[:, None, :].bool())[:, None]
