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

Memory-token layouts (ICAE, 500×, EPL, PIC) are described per token by the chunk it belongs
to and whether it is a memory token; :func:`memory_mask` turns that into a mask. PIC's
one-pass layout ``[C1, M1, C2, M2]`` (2 context tokens ``c`` and 1 memory token ``m`` per
chunk), defaults ``context_visibility="causal"``, ``memory_carry="own"``::

           c1 c1 m1 c2 c2 m2
    c1      x  .  .  .  .  .
    c1      x  x  .  .  .  .
    m1      x  x  x  .  .  .      a memory token sees its own chunk ...
    c2      x  x  .  x  .  .      context tokens see the context causally, never memory
    c2      x  x  .  x  x  .
    m2      .  .  .  x  x  x      ... and nothing of other chunks

``context_visibility="chunk"`` hides c1 from c2 (each chunk encoded as if alone);
``memory_carry="all"`` lets m2 also see m1 (the "iterative" carry-over). ICAE / 500× / EPL
encode each segment as its own row ``[C1, M1]``, which is the same rule with one chunk per
row: ordinary causal attention.
"""

from __future__ import annotations

from typing import Literal

import torch

EncoderAttention = Literal["bidirectional", "causal"]
ContextVisibility = Literal["causal", "chunk"]
MemoryCarry = Literal["own", "all"]


def padded_chunk_mask(
    valid: torch.Tensor, mode: EncoderAttention, segments: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` mask for independently encoded, right-padded chunks.

    Args:
        valid: ``[B, T]`` boolean, ``True`` for real tokens (right padding).
        mode: ``"bidirectional"`` (all real tokens of the chunk visible) or ``"causal"``.
        segments: ``[B, T]`` integers when a row packs several chunks one after another:
            the chunk each token belongs to. A token then sees only its own chunk's tokens,
            exactly as if that chunk had a row of its own (default: one chunk per row).
    """
    if valid.dim() != 2:
        raise ValueError("valid must be [batch, length]")
    batch, length = valid.shape
    allowed = valid[:, None, None, :].expand(batch, 1, length, length)
    if segments is not None:
        if segments.shape != valid.shape:
            raise ValueError("segments must have the shape of valid")
        same = segments[:, None, :, None] == segments[:, None, None, :]
        allowed = allowed & (same | ~valid[:, None, :, None])
    if mode == "causal":
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        # A padded query row keeps all real keys visible so that no row is empty.
        pad_rows = ~valid[:, None, :, None]
        allowed = allowed & (causal | pad_rows)
    elif mode != "bidirectional":
        raise ValueError(f"unknown encoder attention {mode!r}; use 'bidirectional' or 'causal'")
    return allowed.contiguous()


def memory_mask(
    chunk: torch.Tensor,
    is_memory: torch.Tensor,
    valid: torch.Tensor,
    *,
    context_visibility: ContextVisibility = "causal",
    memory_carry: MemoryCarry = "own",
) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` mask for rows of context chunks each followed by its memory.

    Args:
        chunk: ``[B, T]`` chunk index of every token (memory tokens carry their chunk's index).
        is_memory: ``[B, T]`` boolean, ``True`` for memory tokens.
        valid: ``[B, T]`` boolean, ``False`` for right padding.
        context_visibility: context tokens see all earlier context tokens (``"causal"``) or
            only those of their own chunk (``"chunk"``); never memory tokens.
        memory_carry: memory tokens see the earlier memory tokens of their own group
            (``"own"``) or also all memory tokens of earlier chunks (``"all"``).

    Memory tokens always see every context token of their own chunk and nothing of other
    chunks' context. A padded query sees only itself (no row is ever empty, so no NaN).
    """
    if context_visibility not in ("causal", "chunk"):
        raise ValueError(f"unknown context_visibility {context_visibility!r}")
    if memory_carry not in ("own", "all"):
        raise ValueError(f"unknown memory_carry {memory_carry!r}")
    length = chunk.shape[1]
    index = torch.arange(length, device=chunk.device)
    earlier = index[None, :, None] >= index[None, None, :]  # key not after query
    q_chunk, k_chunk = chunk[:, :, None], chunk[:, None, :]
    same_chunk = q_chunk == k_chunk
    q_mem = is_memory[:, :, None] & valid[:, :, None]
    q_ctx = ~is_memory[:, :, None] & valid[:, :, None]
    k_mem = is_memory[:, None, :] & valid[:, None, :]
    k_ctx = ~is_memory[:, None, :] & valid[:, None, :]

    ctx_rule = q_ctx & k_ctx & earlier
    if context_visibility == "chunk":
        ctx_rule = ctx_rule & same_chunk
    memory_peers = same_chunk if memory_carry == "own" else k_chunk <= q_chunk
    mem_rule = q_mem & ((k_ctx & same_chunk & earlier) | (k_mem & earlier & memory_peers))
    pad_rule = ~valid[:, :, None] & (index[None, :, None] == index[None, None, :])
    return (ctx_rule | mem_rule | pad_rule)[:, None]


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
