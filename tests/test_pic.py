"""PIC locality (METHODS.md §2, §4): what a memory group can and cannot be influenced by."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.testing import tiny_model
from tests.conftest import randomize_trainables

CHUNK, RATIO, SLOTS = 8, 2, 4  # 3 chunks of 8 tokens, 4 memory tokens each
IDS = [(13 * i) % 300 + 3 for i in range(3 * CHUNK)]


def groups(attn, output, perturb_at=None, **options):
    """Memory outputs per group. Four layers: through carry-over, information moves one
    memory group per layer, so a 2-layer model could not show it in the K/V of group 2."""
    comp = cc.build_compressor(
        "pic",
        tiny_model(attn_implementation=attn, num_layers=4),
        ratio=RATIO,
        chunk_size=CHUNK,
        lora_rank=8,
        output=output,
        add_bos=False,
        **options,
    )
    randomize_trainables(comp)
    ids = list(IDS)
    if perturb_at is not None:
        ids[perturb_at] = (ids[perturb_at] + 41) % 300 + 3
    (ctx,) = comp.compress_ids([ids])
    assert ctx.compressed_length == 3 * SLOTS
    if output == "hidden":
        return [ctx.embeds[g * SLOTS : (g + 1) * SLOTS] for g in range(3)]
    return [
        torch.stack(
            [
                ctx.keys[:, :, g * SLOTS : (g + 1) * SLOTS],
                ctx.values[:, :, g * SLOTS : (g + 1) * SLOTS],
            ]
        )
        for g in range(3)
    ]


def changed(a, b) -> bool:
    return not torch.allclose(a, b, atol=1e-6, rtol=1e-6)


CASES = [(attn, out) for attn in ("sdpa", "eager") for out in ("hidden", "kv")]


@pytest.mark.parametrize("attn,output", CASES)
def test_memory_sees_only_its_own_chunk(attn, output):
    """Chunk-local context, own memory group: each group depends on its chunk alone."""
    opts = {"context_visibility": "chunk", "memory_carry": "own"}
    base = groups(attn, output, **opts)
    for chunk in range(3):
        other = groups(attn, output, perturb_at=chunk * CHUNK + 3, **opts)
        for g in range(3):
            assert changed(base[g], other[g]) == (g == chunk), (chunk, g)


@pytest.mark.parametrize("attn,output", CASES)
def test_carry_over_lets_earlier_chunks_in(attn, output):
    opts = {"context_visibility": "chunk", "memory_carry": "all"}
    base = groups(attn, output, **opts)
    first = groups(attn, output, perturb_at=2, **opts)
    assert all(changed(base[g], first[g]) for g in range(3))  # through memory carry-over
    last = groups(attn, output, perturb_at=2 * CHUNK + 5, **opts)
    assert [changed(base[g], last[g]) for g in range(3)] == [False, False, True]


@pytest.mark.parametrize("attn,output", CASES)
def test_default_layout_later_chunks_never_leak(attn, output):
    """Default (causal context, own group): a later chunk never reaches an earlier group;
    an earlier chunk reaches later groups only through their chunk's context tokens."""
    base = groups(attn, output)
    last = groups(attn, output, perturb_at=2 * CHUNK + 1)
    assert [changed(base[g], last[g]) for g in range(3)] == [False, False, True]
    middle = groups(attn, output, perturb_at=CHUNK + 4)
    assert [changed(base[g], middle[g]) for g in range(3)] == [False, True, True]


def test_pic_is_one_forward_pass_and_icae_one_row_per_chunk():
    pic = cc.build_compressor("pic", tiny_model(), ratio=2, chunk_size=8, lora_rank=4)
    icae = cc.build_compressor("icae", tiny_model(), ratio=2, chunk_size=8, lora_rank=4)
    ids = [[5] * 24, [6] * 10]
    assert len(pic._rows(ids)) == 2  # one row per document
    assert len(icae._rows(ids)) == 5  # one row per chunk
    row = pic._rows(ids)[0]
    assert row.memory_slot == ([-1] * 8 + [0, 1, 2, 3]) * 3


def test_memory_positions_after_chunk_and_epl():
    after = cc.build_compressor("pic", tiny_model(), ratio=4, chunk_size=8, lora_rank=4)
    epl = cc.build_compressor("epl", tiny_model(), ratio=4, chunk_size=8, lora_rank=4)
    ids = [3] * 16
    (a,) = after.compress_ids([ids])
    (e,) = epl.compress_ids([ids])
    # 1-based positions: chunk 1 = 1..8, memory right after -> 9, 10; EPL centres -> 2, 6.
    assert a.positions.tolist() == [9, 10, 17, 18]
    assert e.positions.tolist() == [2, 6, 10, 14]
    assert after.first_decoder_position(a) == 19  # after the last memory token
    assert epl.first_decoder_position(e) == 16  # L, like SAC


@pytest.mark.parametrize("method", ["icae", "pic"])
def test_soft_prompt_can_be_scaled_to_the_embedding_norm(method):
    base = tiny_model()
    plain = cc.build_compressor(method, base, ratio=4, lora_rank=0)
    scaled = cc.build_compressor(
        method, base, ratio=4, lora_rank=0, soft_prompt_scale="embedding_norm"
    )
    text = "The committee met in Paris in 1987 to discuss the water report. " * 6
    a, b = plain.compress(text), scaled.compress(text)
    table = base.model.get_input_embeddings().weight
    target = table.norm(dim=-1).median()
    torch.testing.assert_close(
        b.embeds.norm(dim=-1), target.expand(b.compressed_length), rtol=1e-4, atol=1e-4
    )
    # Same directions: only the length of each vector changes.
    cosine = torch.nn.functional.cosine_similarity(a.embeds, b.embeds, dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine), rtol=1e-4, atol=1e-4)
    with pytest.raises(cc.InvalidInputError, match="soft_prompt_scale"):
        cc.build_compressor(method, base, ratio=4, lora_rank=0, soft_prompt_scale="unit")
