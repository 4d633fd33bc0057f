"""Quantized storage of compressed contexts: int8 on disk, dequantized on load.

A compressed context is already small; int8 storage makes it another ~4x smaller than
float32 (~2x against bfloat16) for the disk and the service's store, at a rounding error
bounded by half a quantization step. Symmetric absmax quantization (``q = round(x / s)``,
``s = max|x| / 127``) with the scale grouping of KIVI (Liu et al., 2024, "KIVI: A
Tuning-Free Asymmetric 2bit Quantization for KV Cache"): **keys per channel** (one scale per
layer, head and head dimension, over the tokens: keys have outlier channels that a
per-token scale would spread over every entry), **values per token** (one scale per layer,
head and entry), **embeddings per entry** (one scale per soft-prompt vector). Scales are
float32. Positions stay integers, unquantized.

A primitive (torch and the package's errors only). :meth:`CompressedContext.save` / ``load`` use it.
"""

from __future__ import annotations

import torch

from .errors import InvalidInputError

SCHEMES = ("int8",)
"""Storage schemes besides plain (unquantized) float."""
_LEVELS = 127
# The axis each tensor's scale is shared over (reduced by the absmax): keys over the tokens
# (dim 2 of [layers, heads, C, head_dim]), values over the head dimension, embeds over hidden.
_SHARED_AXIS = {"keys": 2, "values": 3, "embeds": 1}


def check_scheme(scheme: str | None) -> str | None:
    """``scheme`` if it is None or names a storage scheme, else an error that lists them."""
    if scheme is not None and scheme not in SCHEMES:
        raise InvalidInputError(
            f"unknown quantization {scheme!r}; use one of {', '.join(SCHEMES)} (or none)"
        )
    return scheme


def quantize(name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 values, float32 scales)`` of ``tensor`` (``"keys"``, ``"values"`` or
    ``"embeds"``); ``q * scale`` is within ``scale / 2`` of every entry."""
    x = tensor.detach().float()
    axis = _SHARED_AXIS[name]
    if x.shape[axis] == 0:  # an empty context (no entries): nothing to scale
        shape = [*x.shape[:axis], 1, *x.shape[axis + 1 :]]
        return x.to(torch.int8), torch.ones(shape, device=x.device)
    absmax = x.abs().amax(dim=axis, keepdim=True)
    scale = torch.where(absmax > 0, absmax / _LEVELS, torch.ones_like(absmax))
    q = torch.round(x / scale).clamp_(-_LEVELS, _LEVELS).to(torch.int8)
    return q, scale


def dequantize(name: str, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``dtype`` tensor that ``quantize(name, ...)`` stored as ``(q, scale)``; a
    ``ValueError`` when they do not fit together (a damaged file)."""
    expected = list(q.shape)
    expected[_SHARED_AXIS[name]] = 1
    if q.dtype != torch.int8 or scale.dtype != torch.float32 or list(scale.shape) != expected:
        raise ValueError(
            f"expected int8 values and float32 scales of shape {expected}, got {q.dtype} "
            f"{list(q.shape)} and {scale.dtype} {list(scale.shape)}"
        )
    return (q.float() * scale).to(dtype)


def quantized_bytes(name: str, tensor: torch.Tensor) -> int:
    """Bytes ``tensor`` takes stored as int8 values plus float32 scales."""
    shared = tensor.shape[_SHARED_AXIS[name]]
    return tensor.numel() + 4 * (tensor.numel() // max(1, shared))
