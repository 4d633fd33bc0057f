"""Every attention mask the methods use, built in one place.

Masks are built as boolean tensors ``[batch, 1, query, key]`` where ``True`` means "may
attend", then converted for the attention backend by :func:`for_backend`:

* ``eager`` *adds* the mask to the attention scores: it needs an additive float mask
  (0 where allowed, the dtype's minimum where not). A boolean mask there is silently wrong
  (``True``/``False`` are added as 1/0).
* ``sdpa`` reads a boolean mask natively (``True`` = attend); it also accepts the additive form.
* FlashAttention ignores custom masks, and flex_attention crashed on CPU: both are refused
  when a model is loaded (``models.SUPPORTED_ATTENTION``).

Tests check the semantics the model actually applies (perturb a later token and watch an
earlier token's keys/values change) rather than assuming them.

SAC encoder chunk, 4 real tokens + 1 pad, ``bidirectional`` (every real token sees every real
token of its chunk; pad keys are hidden)::

        k0 k1 k2 k3 pad
    q0   x  x  x  x  .
    q1   x  x  x  x  .
    q2   x  x  x  x  .
    q3   x  x  x  x  .
    pad  x  x  x  x  .

``causal`` (the ablation "without the bidirectional mask")::

        k0 k1 k2 k3 pad
    q0   x  .  .  .  .
    q1   x  x  .  .  .
    q2   x  x  x  .  .
    q3   x  x  x  x  .
    pad  x  x  x  x  .
"""

from __future__ import annotations

from typing import Literal

import torch

EncoderAttention = Literal["bidirectional", "causal"]


def padded_chunk_mask(valid: torch.Tensor, mode: EncoderAttention) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` mask for independently encoded, right-padded chunks.

    Args:
        valid: ``[B, T]`` boolean, ``True`` for real tokens (right padding).
        mode: ``"bidirectional"`` (all real tokens of the chunk visible) or ``"causal"``.
    """
    if valid.dim() != 2:
        raise ValueError("valid must be [batch, length]")
    batch, length = valid.shape
    allowed = valid[:, None, None, :].expand(batch, 1, length, length)
    if mode == "causal":
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        # A padded query row keeps all real keys visible so that no row is empty.
        pad_rows = ~valid[:, None, :, None]
        allowed = allowed & (causal | pad_rows)
    elif mode != "bidirectional":
        raise ValueError(f"unknown encoder attention {mode!r}; use 'bidirectional' or 'causal'")
    return allowed.contiguous()


def for_backend(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Convert a boolean "may attend" mask into what the attention backend expects."""
    if mask.dtype != torch.bool:
        raise TypeError("for_backend expects a boolean mask (True = may attend)")
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(
        f"no tested custom-mask semantics for attn_implementation={attn_implementation!r}; "
        "use 'sdpa' or 'eager'"
    )
