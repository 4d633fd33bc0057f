"""Composing compressed contexts: several separately compressed documents read as one.

Compress each passage once, then place any selection of them one after another for a
question (retrieval-augmented generation with reuse; issue 20). Context ``i`` is placed as if
its tokens followed those of the contexts before it: its positions move by
``offset_i = L_0 + ... + L_{i-1}`` and, for KV contexts, its keys are re-rotated by that
many positions (:func:`ctxcompress.rope.shift_keys`: exact, no re-encoding; values stay).
Embedding contexts need no rotation: the decoder applies their (moved) positions when it
reads them. The composed context's length L is the sum, so the question follows the last.

What this equals: SAC encodes its 510-token chunks independently, so for token sequences
``x`` and ``y`` with ``len(x)`` a multiple of ``chunk_size`` (and no attention sink, which
only the first chunk of a document has), ``compose([compress_ids(x), compress_ids(y)])`` is
``compress_ids(x + y)`` up to float rounding (tested). Otherwise a composition is each
document compressed on its own — each keeps its own start (BOS, context prefix) — which is
what a method with independent chunks sees anyway at chunk boundaries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..context import CompressedContext
from ..errors import ContextTooLongError, InvalidInputError
from ..rope import shift_keys, shift_problem

if TYPE_CHECKING:
    from .base import Compressor


def compose_contexts(comp: Compressor, contexts: Sequence[CompressedContext]) -> CompressedContext:
    """One context reading ``contexts`` in order (see the module docstring); every context
    must come from ``comp`` (same method, base model and trained weights)."""
    contexts = list(contexts)
    if not contexts:
        raise InvalidInputError("compose needs at least one context")
    for i, ctx in enumerate(contexts):
        if not isinstance(ctx, CompressedContext):
            raise InvalidInputError(
                f"context {i} is a {type(ctx).__name__}, not a CompressedContext"
            )
        comp.check_context(ctx)
        if ctx.compressed_length and ctx.positions is None:
            raise InvalidInputError(f"context {i} records no positions: it cannot be moved")
    total = sum(c.original_length for c in contexts)
    if total > comp.max_context_tokens:
        raise ContextTooLongError(
            f"the composed context would stand for {total} tokens "
            f"({' + '.join(str(c.original_length) for c in contexts)}), more than the base "
            f"model's {comp.max_positions} positions allow; compose fewer contexts"
        )
    if len(contexts) == 1:
        return contexts[0]
    kv = contexts[0].kind == "kv"
    if kv and (problem := shift_problem(comp.lm)):
        raise InvalidInputError(f"cannot compose KV contexts of this model: {problem}")
    device = (contexts[0].keys if kv else contexts[0].embeds).device
    keys, values, embeds, positions, offset = [], [], [], [], 0
    for ctx in contexts:
        if ctx.compressed_length:
            positions.append(ctx.positions.cpu() + offset)
            if kv:
                keys.append(shift_keys(comp.lm, ctx.keys.to(device), offset))
                values.append(ctx.values.to(device))
            else:
                embeds.append(ctx.embeds.to(device))
        offset += ctx.original_length
    first = contexts[0]
    parts = [
        {"original_length": c.original_length, "compressed_length": c.compressed_length}
        for c in contexts
    ]
    if not positions:  # every context is empty (e.g. no_context)
        return dataclasses.replace(first, original_length=total, meta={"composed_of": parts})
    return CompressedContext(
        kind=first.kind,
        method=first.method,
        base_model=first.base_model,
        compressor=first.compressor,
        original_length=total,
        keys=torch.cat(keys, dim=2) if kv else None,
        values=torch.cat(values, dim=2) if kv else None,
        embeds=None if kv else torch.cat(embeds),
        positions=torch.cat(positions),
        meta={"composed_of": parts},
    )
