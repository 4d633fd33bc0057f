"""Moving cached keys to other positions: rotary position embeddings (RoPE) compose.

A cached key is stored after RoPE, ``k_p = R(p) k``, where ``R(p)`` rotates each pair of
dimensions ``(i, i + d/2)`` by the angle ``p * inv_freq[i]`` (Su et al., 2021, RoFormer).
Rotations by ``p`` then by ``s`` are a rotation by ``p + s``, so ``R(s) k_p = k_{p+s}``: a
key computed at position ``p`` is moved to ``p + s`` exactly, without running the model
again. This is what lets separately compressed contexts be placed one after another
(:meth:`Compressor.compose`). Values carry no position and stay as they are.

It holds for RoPE whose frequencies do not depend on the sequence: the default, ``linear``,
``llama3`` and ``yarn`` types (yarn's cos/sin scale is already in the cached key and stays).
``dynamic`` and ``longrope`` change their frequencies with the length seen, and models
without RoPE have nothing to rotate; :func:`shift_problem` says so. A primitive (torch only).
"""

from __future__ import annotations

from typing import Any

import torch

SHIFTABLE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_type(config: Any) -> str:
    """The model's RoPE type (``"default"`` without scaling)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if isinstance(params, dict):
        return str(params.get("rope_type") or params.get("type") or "default")
    return "default"


def _rotary(model: Any) -> Any:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return getattr(decoder, "rotary_emb", None)


def shift_problem(model: Any) -> str | None:
    """Why keys of ``model`` cannot be moved exactly to other positions, or None."""
    rotary = _rotary(model)
    if rotary is not None and getattr(rotary, "layer_types", None):
        return (
            f"{type(model).__name__} rotates keys with a different RoPE per layer type (local "
            "and global layers); moving keys to other positions is not supported for it yet"
        )
    if rotary is None or not hasattr(rotary, "inv_freq"):
        return f"{type(model).__name__} has no rotary position embedding to shift keys with"
    kind = rope_type(model.config)
    if kind not in SHIFTABLE_ROPE_TYPES:
        return (
            f"RoPE type {kind!r} changes its frequencies with the sequence length, so keys "
            f"cannot be moved exactly; supported: {', '.join(SHIFTABLE_ROPE_TYPES)}"
        )
    return None


def shift_keys(model: Any, keys: torch.Tensor, shift: int) -> torch.Tensor:
    """``keys`` (``[..., head_dim]``, after RoPE) moved ``shift`` positions later (or earlier
    for a negative ``shift``): each rotary pair turned by ``shift * inv_freq``, in float32,
    returned in the keys' dtype. Dimensions beyond the rotary ones (partial RoPE) stay."""
    if problem := shift_problem(model):
        raise ValueError(problem)
    if shift == 0:
        return keys
    rotary = _rotary(model)
    inv_freq = rotary.inv_freq.to(device=keys.device, dtype=torch.float64)
    angles = torch.cat([shift * inv_freq] * 2).float()  # float64 product: exact for big shifts
    cos, sin = angles.cos(), angles.sin()
    width = cos.shape[0]
    x = keys[..., :width].float()
    half = width // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    moved = (x * cos + rotated * sin).to(keys.dtype)
    return torch.cat([moved, keys[..., width:]], dim=-1) if width < keys.shape[-1] else moved
