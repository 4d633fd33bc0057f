"""Anchor layout and compressed lengths (METHODS.md §1), against a literal reading of the spec."""

from __future__ import annotations

import pytest

from ctxcompress.positions import chunk_spans, sac_anchor_offsets, sac_compressed_length
from tests.conftest import make_sac


def spec_anchor_positions(length: int, r: int, chunk: int = 510) -> list[int]:
    """METHODS.md §1 verbatim, with 1-based global positions: chunk a..b, s = a + (r-1)//2
    (s = a if s > b), anchors s, s+r, ... <= b."""
    anchors = []
    for a in range(1, length + 1, chunk):
        b = min(a + chunk - 1, length)
        s = a + (r - 1) // 2
        if s > b:
            s = a
        anchors += list(range(s, b + 1, r))
    return anchors


LENGTHS = [1, 2, 3, 7, 50, 509, 510, 511, 1020, 1030, 1530]
RATIOS = [1, 2, 5, 15, 51]


@pytest.mark.parametrize("r", RATIOS)
@pytest.mark.parametrize("length", LENGTHS)
def test_anchor_count_matches_spec(length, r):
    expected = spec_anchor_positions(length, r)
    assert sac_compressed_length(length, r, 510) == len(expected)
    got = [s + off + 1 for s, e in chunk_spans(length, 510) for off in sac_anchor_offsets(e - s, r)]
    assert got == expected


def test_full_chunk_counts_from_the_paper_code():
    assert len(sac_anchor_offsets(510, 5)) == 102
    assert len(sac_anchor_offsets(510, 15)) == 34
    assert len(sac_anchor_offsets(510, 51)) == 10


def test_short_last_chunk_gets_one_anchor():
    # L = 511 at r = 51: the second chunk is one token long, before the first centre.
    assert sac_anchor_offsets(1, 51) == [0]
    assert sac_compressed_length(511, 51, 510) == 11
    assert sac_compressed_length(3, 51, 510) == 1  # L < r


@pytest.mark.parametrize("r", [1, 2, 5, 15, 51])
@pytest.mark.parametrize("length", [3, 510, 511, 1530])
def test_compressed_length_of_real_compression(tiny, length, r):
    """The compressor really keeps exactly the specified anchors, at their 1-based positions."""
    comp = make_sac(tiny, ratio=r, lora_rank=0)
    ids = [(7 * i) % 300 + 3 for i in range(length)]
    (ctx,) = comp.compress_ids([ids])
    expected = spec_anchor_positions(length, r)
    assert ctx.compressed_length == len(expected) == comp.compressed_length(length)
    assert ctx.positions.tolist() == expected
    assert ctx.original_length == length


def test_random_anchor_selection_keeps_the_count(tiny):
    comp = make_sac(tiny, ratio=5, anchor_selection="random", lora_rank=0)
    ids = list(range(3, 300)) * 4
    (ctx,) = comp.compress_ids([ids])
    assert ctx.compressed_length == sac_compressed_length(len(ids), 5, 510)
    assert ctx.positions.tolist() != spec_anchor_positions(len(ids), 5)
    assert ctx.positions.tolist() == sorted(set(ctx.positions.tolist()))
