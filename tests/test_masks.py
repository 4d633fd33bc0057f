"""Mask builders against hand-written masks, and the backend conversion."""

from __future__ import annotations

import torch

from ctxcompress.masks import for_backend, memory_mask, padded_chunk_mask


def grid(rows: str) -> torch.Tensor:
    """'x' = may attend, '.' = may not; one string per query row."""
    return torch.tensor([[c == "x" for c in r.split()] for r in rows.strip().splitlines()])


def test_bidirectional_and_causal_chunk_masks():
    valid = torch.tensor([[True, True, True, False]])
    bi = padded_chunk_mask(valid, "bidirectional")[0, 0]
    assert torch.equal(
        bi,
        grid("""
        x x x .
        x x x .
        x x x .
        x x x .
    """),
    )
    causal = padded_chunk_mask(valid, "causal")[0, 0]
    assert torch.equal(
        causal,
        grid("""
        x . . .
        x x . .
        x x x .
        x x x .
    """),
    )


def test_packed_chunks_see_only_themselves():
    """Two chunks packed in one row (3 + 2 tokens) and a pad: block-diagonal, as if each
    had a row of its own; the pad query keeps real keys so that its row is not empty."""
    valid = torch.tensor([[True] * 5 + [False]])
    segments = torch.tensor([[0, 0, 0, 1, 1, -1]])
    bi = padded_chunk_mask(valid, "bidirectional", segments)[0, 0]
    assert torch.equal(
        bi,
        grid("""
        x x x . . .
        x x x . . .
        x x x . . .
        . . . x x .
        . . . x x .
        x x x x x .
    """),
    )
    causal = padded_chunk_mask(valid, "causal", segments)[0, 0]
    assert torch.equal(
        causal,
        grid("""
        x . . . . .
        x x . . . .
        x x x . . .
        . . . x . .
        . . . x x .
        x x x x x .
    """),
    )


# One PIC row: chunk 0 = 2 context + 1 memory, chunk 1 = 2 context + 1 memory, 1 pad.
CHUNK = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
MEMORY = torch.tensor([[False, False, True, False, False, True, False]])
VALID = torch.tensor([[True] * 6 + [False]])


def test_pic_default_mask_causal_context_own_memory():
    got = memory_mask(CHUNK, MEMORY, VALID)[0, 0]
    assert torch.equal(
        got,
        grid("""
        x . . . . . .
        x x . . . . .
        x x x . . . .
        x x . x . . .
        x x . x x . .
        . . . x x x .
        . . . . . . x
    """),
    )


def test_pic_mask_chunk_local_context():
    got = memory_mask(CHUNK, MEMORY, VALID, context_visibility="chunk")[0, 0]
    assert torch.equal(
        got,
        grid("""
        x . . . . . .
        x x . . . . .
        x x x . . . .
        . . . x . . .
        . . . x x . .
        . . . x x x .
        . . . . . . x
    """),
    )


def test_pic_mask_memory_carry_over():
    got = memory_mask(CHUNK, MEMORY, VALID, memory_carry="all")[0, 0]
    assert torch.equal(
        got,
        grid("""
        x . . . . . .
        x x . . . . .
        x x x . . . .
        x x . x . . .
        x x . x x . .
        . . x x x x .
        . . . . . . x
    """),
    )


def test_memory_group_of_two_sees_its_earlier_slots_only():
    chunk = torch.tensor([[0, 0, 0, 0]])
    memory = torch.tensor([[False, False, True, True]])
    got = memory_mask(chunk, memory, torch.ones(1, 4, dtype=torch.bool))[0, 0]
    assert torch.equal(
        got,
        grid("""
        x . . .
        x x . .
        x x x .
        x x x x
    """),
    )  # one chunk per row (ICAE / 500x / EPL) is plain causal attention


def test_backend_conversion():
    mask = grid("""
        x .
        x x
    """)[None, None]
    assert for_backend(mask, "sdpa", torch.float32).dtype == torch.bool
    eager = for_backend(mask, "eager", torch.float32)[0, 0]
    assert eager.dtype == torch.float32
    assert eager[0, 0] == 0 and eager[1, 1] == 0 and eager[0, 1] == torch.finfo(torch.float32).min
