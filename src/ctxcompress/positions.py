"""Position layouts: chunking, SAC anchor positions, (later) memory and EPL positions.

Conventions: token *indices* are 0-based offsets into the tokenized context; *position ids*
are what the model's RoPE sees, ``index + position_start`` (SAC's code uses 1-based
positions, ``position_start = 1``). A chunk is a half-open index range ``[start, end)``.
"""

from __future__ import annotations

import torch


def chunk_spans(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` chunks of ``chunk_size`` tokens; the last may be shorter."""
    if length < 1:
        raise ValueError("length must be >= 1")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return [(s, min(s + chunk_size, length)) for s in range(0, length, chunk_size)]


def sac_anchor_offsets(chunk_len: int, ratio: int, sink: int = 0) -> list[int]:
    """Anchor offsets within one chunk (SAC, METHODS.md §1, from the authors' code).

    The centre token of every ``ratio``-token segment: for a chunk covering 1-based positions
    ``a..b``, ``s = a + (r-1)//2`` (``s = a`` if that is past ``b``), anchors at
    ``s, s+r, ... <= b``. A full 510-token chunk gives 102 anchors at r=5, 34 at r=15 and 10
    at r=51; a chunk shorter than the first centre still gets one anchor (its first token).

    With ``sink`` > 0 (the first chunk of a context that keeps attention-sink tokens, see
    :func:`sink_count`) the chunk's budget is unchanged but its first ``sink_count`` entries
    are the sink tokens themselves: the remaining anchors are the centres of equal segments
    of the tokens after the sink (:func:`centre_offsets`).
    """
    if ratio < 1:
        raise ValueError("ratio must be >= 1")
    if sink > 0:
        budget = len(sac_anchor_offsets(chunk_len, ratio))
        kept = sink_count(chunk_len, ratio, sink)
        return centre_offsets(kept, chunk_len, budget - kept)
    first = (ratio - 1) // 2
    if first >= chunk_len:
        first = 0
    return list(range(first, chunk_len, ratio))


def sink_count(chunk_len: int, ratio: int, sink_tokens: int) -> int:
    """How many attention-sink tokens a first chunk keeps: ``sink_tokens``, but never more
    than the chunk's budget (its number of anchors / memory slots), inside which they count.
    """
    if sink_tokens < 0:
        raise ValueError("sink_tokens must be >= 0")
    return min(sink_tokens, len(sac_anchor_offsets(chunk_len, ratio)))


def centre_offsets(start: int, end: int, count: int) -> list[int]:
    """The centres of ``count`` equal segments of the offsets ``[start, end)`` (strictly
    increasing; ``count`` must not exceed ``end - start``)."""
    if count > end - start:
        raise ValueError(f"{count} centres do not fit in [{start}, {end})")
    return [start + ((2 * i + 1) * (end - start)) // (2 * count) for i in range(count)]


def random_anchor_offsets(
    chunk_len: int, ratio: int, generator: torch.Generator, sink: int = 0
) -> list[int]:
    """As many anchors as :func:`sac_anchor_offsets` gives, at random offsets (an ablation);
    with ``sink``, drawn from the tokens after the chunk's sink tokens."""
    kept = sink_count(chunk_len, ratio, sink) if sink else 0
    count = len(sac_anchor_offsets(chunk_len, ratio, sink))
    return sorted((kept + torch.randperm(chunk_len - kept, generator=generator)[:count]).tolist())


def sac_compressed_length(length: int, ratio: int, chunk_size: int) -> int:
    """Number of anchors SAC keeps for a context of ``length`` tokens."""
    return sum(len(sac_anchor_offsets(e - s, ratio)) for s, e in chunk_spans(length, chunk_size))


def memory_slots(chunk_len: int, ratio: int) -> int:
    """Memory tokens for a chunk of ``chunk_len`` tokens. [guess]

    The number of SAC anchors of that chunk, so that every method has exactly the same
    compressed length at the same ratio (a fair comparison): ``chunk_size / r`` for a full
    chunk that r divides, and at least one for any chunk.
    """
    return len(sac_anchor_offsets(chunk_len, ratio))


def memory_offsets(chunk_len: int, ratio: int, layout: str, sink: int = 0) -> list[int]:
    """Position offsets (from the chunk's first token) of a chunk's memory tokens.

    ``"after_chunk"``: the memory group continues right after its chunk (ICAE, 500×, PIC);
    ``"epl"``: each memory token sits at the centre of the r-token segment it summarises,
    i.e. exactly where SAC puts its anchors (EPL, Zhao et al., EMNLP Findings 2025).
    ``sink``: the chunk keeps that many attention-sink tokens inside its budget
    (:func:`sink_count`), so it gets that many fewer memory tokens.
    """
    count = memory_slots(chunk_len, ratio) - (sink_count(chunk_len, ratio, sink) if sink else 0)
    if layout == "after_chunk":
        return [chunk_len + j for j in range(count)]
    if layout == "epl":
        return sac_anchor_offsets(chunk_len, ratio, sink)
    raise ValueError(f"unknown memory position layout {layout!r}; use 'after_chunk' or 'epl'")
