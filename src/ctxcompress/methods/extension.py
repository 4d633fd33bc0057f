"""Growing contexts (issue 20 part 4): ``comp.extend(ctx, new_text)`` compresses only what
was added — a conversation or an agent's history kept compressed as it grows.

SAC encodes its chunks independently, each with its global positions, so a context grows by
encoding new chunks after the old ones. Its last chunk is usually not full, and how the new
text meets it is the one choice:

- **open tail** (exact): ``compress(text, keep_tail=True)`` records the token ids of the
  last, partial chunk in ``ctx.meta["tail_ids"]`` (at most ``chunk_size - 1`` ids; they are
  the document's own tokens, so the file then holds that much of the text). ``extend`` drops
  that chunk's anchors and encodes the tail plus the new tokens from the chunk's start: the
  result equals compressing the whole token sequence (tested) and keeps a new open tail.
  Cost: at most one chunk re-encoded on top of the new tokens.
- **closed tail** (a context without ``tail_ids``): the partial chunk stays as it was, and the
  new text starts new chunks at L. Nothing is re-encoded, but the chunk grid is no longer the
  whole text's: the last old chunk is compressed as a short chunk.

The added text is tokenized without BOS or context prefix (it continues the document) and
compressed at the context's own ratio (``ctx.meta["ratio"]``, e.g. one a budget chose).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..context import CompressedContext
from ..errors import InvalidInputError
from ..positions import chunk_spans

if TYPE_CHECKING:
    from .sac import SACCompressor


def tail_ids(ids: Sequence[int], chunk_size: int) -> list[int]:
    """The ids of the last chunk of ``ids`` if it is partial, else none."""
    start, end = chunk_spans(len(ids), chunk_size)[-1]
    return [int(i) for i in ids[start:end]] if end - start < chunk_size else []


def extend_ids(
    comp: SACCompressor, ctx: CompressedContext, new_ids: Sequence[int]
) -> CompressedContext:
    """``ctx`` grown by the token ids ``new_ids`` (see the module docstring)."""
    comp.check_context(ctx)
    new_ids = [int(i) for i in new_ids]
    if not new_ids:
        raise InvalidInputError("nothing to add: the new text has no tokens")
    if comp.config.anchor_selection != "uniform":
        raise InvalidInputError(
            "extend needs anchor_selection='uniform' (random anchors are drawn per chunk place, "
            "and scored anchors depend on the text around them: a grown context would not be "
            "the context of the whole text)"
        )
    if "composed_of" in ctx.meta:
        raise InvalidInputError("a composed context cannot be extended; extend its last part")
    tail = ctx.meta.get("tail_ids")
    open_tail = isinstance(tail, list)
    start = ctx.original_length - len(tail) if open_tail else ctx.original_length
    ids = (tail if open_tail else []) + new_ids
    comp._check_length(start + len(ids))
    ratio = int(ctx.meta.get("ratio", comp.config.ratio))
    with comp.inference(), comp.at_ratio(ratio):
        (grown,) = comp.encode_ids([ids], starts=[start])
    keep = ctx.positions.cpu() < start + comp.config.position_start
    on_device = keep.to(ctx.keys.device)
    keys = torch.cat([ctx.keys[:, :, on_device].to(grown.keys), grown.keys], dim=2)
    values = torch.cat([ctx.values[:, :, on_device].to(grown.values), grown.values], dim=2)
    positions = torch.cat([ctx.positions.cpu()[keep], grown.positions])
    meta = {k: v for k, v in ctx.meta.items() if k != "tail_ids"} | {"ratio": ratio}
    if open_tail:  # the tail started on the whole text's chunk grid, so does the new one
        meta["tail_ids"] = tail_ids(ids, comp.config.chunk_size)
    return CompressedContext(
        kind="kv",
        method=ctx.method,
        base_model=ctx.base_model,
        compressor=ctx.compressor,
        original_length=start + len(ids),
        keys=keys.detach(),
        values=values.detach(),
        positions=positions,
        meta=meta,
    )
