"""SAC invariants (METHODS.md §1 and §4) on tiny random-init models."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import ctxcompress as cc
from ctxcompress.models import output_cache
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, make_sac, randomize_trainables


def degenerate_sac(base, **options):
    """r = 1, causal encoder, no anchor embedding, no adapter: the full-context KV cache."""
    return cc.build_compressor(
        "sac",
        base,
        ratio=1,
        encoder_attention="causal",
        anchor_embedding="none",
        lora_rank=0,
        **options,
    )


def reference_full_context(comp, ctx_ids, question_ids, max_new_tokens):
    """The plain model reading [context tokens, [LM], question] in one sequence, with the same
    position ids (context 1..L, [LM] at L, question from L+1), no cache, re-run every step."""
    model = comp.lm
    embed = model.get_input_embeddings()
    start = comp.config.position_start
    length = len(ctx_ids)
    embeds = torch.cat(
        [
            embed(torch.tensor(ctx_ids)),
            comp.lm_embedding[None].detach(),
            embed(torch.tensor(question_ids)),
        ]
    )
    positions = list(range(start, start + length)) + [
        length + comp.config.decoder_position_offset + i for i in range(1 + len(question_ids))
    ]
    first_logits, tokens = None, []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = model(inputs_embeds=embeds[None], position_ids=torch.tensor([positions]))
            logits = out.logits[0, -1]
            first_logits = logits if first_logits is None else first_logits
            token = int(logits.argmax())
            if token in comp._eos_ids():
                break
            tokens.append(token)
            embeds = torch.cat([embeds, embed(torch.tensor([token]))])
            positions.append(positions[-1] + 1)
    return first_logits, comp.tokenizer.decode(tokens, skip_special_tokens=True).strip()


@pytest.mark.parametrize("position_start,offset", [(1, 0), (0, 0), (1, 1)])
def test_r1_causal_no_adapter_equals_full_context(tiny_any, position_start, offset):
    comp = degenerate_sac(tiny_any, position_start=position_start, decoder_position_offset=offset)
    ctx_ids = comp.context_ids(TEXT * 2)
    assert len(ctx_ids) < comp.config.chunk_size
    (ctx,) = comp.compress_ids([ctx_ids])
    assert ctx.compressed_length == len(ctx_ids)

    # 1. The compressed KV *is* the full-context KV cache.
    start = comp.config.position_start
    with torch.no_grad():
        out = comp.lm(
            input_ids=torch.tensor([ctx_ids]),
            position_ids=torch.arange(start, start + len(ctx_ids))[None],
            use_cache=True,
        )
    full = output_cache(out)
    for layer in range(len(full.layers)):
        torch.testing.assert_close(
            ctx.keys[layer], full.layers[layer].keys[0], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            ctx.values[layer], full.layers[layer].values[0], atol=1e-5, rtol=1e-5
        )

    # 2. Same logits for the first answer token, and the same greedy answer.
    q_ids = comp.question_ids("Who wrote the report?")
    ref_logits, ref_answer = reference_full_context(comp, ctx_ids, q_ids, max_new_tokens=12)
    logits = comp.decoder_forward([ctx], [q_ids])[0, -1]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    answer = comp.generate(ctx, "Who wrote the report?", max_new_tokens=12)
    assert answer == ref_answer


def test_r1_equivalence_across_a_long_single_chunk(tiny):
    """With one chunk covering everything, r=1 still reproduces the full context beyond 510."""
    comp = degenerate_sac(tiny, chunk_size=2048)
    ctx_ids = comp.context_ids(TEXT * 12)
    assert len(ctx_ids) > 510
    (ctx,) = comp.compress_ids([ctx_ids])
    q_ids = comp.question_ids("Where did the committee meet?")
    ref_logits, ref_answer = reference_full_context(comp, ctx_ids, q_ids, max_new_tokens=8)
    torch.testing.assert_close(
        comp.decoder_forward([ctx], [q_ids])[0, -1], ref_logits, atol=1e-4, rtol=1e-4
    )
    assert comp.generate(ctx, "Where did the committee meet?", max_new_tokens=8) == ref_answer


def test_batched_compression_equals_one_by_one(tiny_any):
    comp = make_sac(tiny_any, ratio=5)
    randomize_trainables(comp)
    texts = [TEXT * 9, "A short one.", TEXT * 3 + "end", TEXT * 20]  # 1..3 chunks, mixed
    batched = comp.compress(texts)
    for text, got in zip(texts, batched, strict=True):
        alone = comp.compress(text)
        assert got.original_length == alone.original_length
        assert torch.equal(got.positions, alone.positions)
        torch.testing.assert_close(got.keys, alone.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, alone.values, atol=1e-5, rtol=1e-5)


def test_encoder_batch_size_does_not_change_the_result():
    texts = [TEXT * 20, TEXT * 5]
    a = make_sac(tiny_model(), ratio=4, encoder_batch_size=1)
    b = make_sac(tiny_model(), ratio=4, encoder_batch_size=64)
    for x, y in zip(a.compress(texts), b.compress(texts), strict=True):
        torch.testing.assert_close(x.keys, y.keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_encoder_mask_is_really_bidirectional(attn):
    """Perturb a later token: an earlier anchor's K/V must change (deeper layers), and must
    not change under the causal ablation. A token in another chunk never matters."""
    ids = [(5 * i) % 250 + 3 for i in range(40)]
    later = list(ids)
    later[30] = (later[30] + 17) % 250 + 3

    def anchor_kv(mode, tokens, chunk_size=510):
        base = tiny_model("llama", attn_implementation=attn)
        comp = make_sac(base, ratio=2, encoder_attention=mode, chunk_size=chunk_size)
        randomize_trainables(comp)
        (ctx,) = comp.compress_ids([tokens])
        return ctx.keys[1:, :, :5], ctx.values[1:, :, :5]  # first anchors, layers >= 1

    k0, v0 = anchor_kv("bidirectional", ids)
    k1, v1 = anchor_kv("bidirectional", later)
    assert not torch.allclose(k0, k1, atol=1e-6) and not torch.allclose(v0, v1, atol=1e-6)
    c0, cv0 = anchor_kv("causal", ids)
    c1, cv1 = anchor_kv("causal", later)
    torch.testing.assert_close(c0, c1, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cv0, cv1, atol=1e-6, rtol=1e-6)
    # Chunks are independent: with 20-token chunks, token 30 is in the second chunk.
    s0, sv0 = anchor_kv("bidirectional", ids, chunk_size=20)
    s1, sv1 = anchor_kv("bidirectional", later, chunk_size=20)
    torch.testing.assert_close(s0, s1, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sv0, sv1, atol=1e-6, rtol=1e-6)


def test_anchor_keys_carry_their_true_positions(tiny):
    """Anchors keep natural global positions: the same chunk content at another place in the
    document gives different (RoPE-rotated) keys but identical values at layer 0."""
    comp = make_sac(tiny, ratio=3, chunk_size=30, lora_rank=0, anchor_embedding="none")
    block = [(3 * i) % 200 + 3 for i in range(30)]
    (ctx,) = comp.compress_ids([block + block])
    first, second = slice(0, 10), slice(10, 20)
    torch.testing.assert_close(ctx.values[0][:, first], ctx.values[0][:, second])
    assert not torch.allclose(ctx.keys[0][:, first], ctx.keys[0][:, second])
    assert ctx.positions[10] - ctx.positions[0] == 30


@pytest.mark.parametrize("anchor_embedding", ["per_slot", "shared"])
def test_backward_reaches_only_the_trainable_parameters(tiny, anchor_embedding):
    comp = make_sac(tiny, ratio=4, anchor_embedding=anchor_embedding)
    randomize_trainables(comp)  # zero-init LoRA B would give LoRA A an exactly-zero gradient
    comp.train()
    contexts = comp.encode_ids([comp.context_ids(TEXT * 3), comp.context_ids("Short text.")])
    prompts = [comp.question_ids("Who?") + [5, 6], comp.question_ids("Where?") + [7]]
    logits = comp.decoder_forward(contexts, prompts)
    logits[:, -3:].logsumexp(-1).sum().backward()

    trainable = comp.trainable_parameters()
    names = set(trainable)
    assert "lm_embedding" in names and "anchor_embedding" in names
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    last = comp.lm.config.num_hidden_layers - 1
    for name, p in trainable.items():
        if f"layers.{last}.self_attn.q_proj" in name:
            # The last layer's queries only shape that layer's outputs, which SAC never uses
            # (it keeps the layer's K/V): no gradient can reach them, by construction.
            assert p.grad is None or p.grad.abs().sum() == 0, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in comp.named_parameters():
        if name not in names:
            assert not p.requires_grad and p.grad is None, name
    expected = {"per_slot": (comp.anchors_per_chunk, 64), "shared": (1, 64)}[anchor_embedding]
    assert tuple(comp.anchor_embedding.shape) == expected


def test_trainable_parameters_are_only_lora_qv_and_embeddings(tiny):
    comp = make_sac(tiny, ratio=5)
    for name in comp.trainable_parameters():
        assert name in ("lm_embedding", "anchor_embedding") or (
            "lora_" in name and ("q_proj" in name or "v_proj" in name)
        ), name
    none = make_sac(tiny_model(), ratio=5, anchor_embedding="none")
    assert none.anchor_embedding is None
    assert "anchor_embedding" not in none.trainable_parameters()


def test_decoder_is_the_base_model_with_the_adapter_off(tiny):
    """Answering uses the frozen weights: a (non-zero) adapter must not change the decoder."""
    comp = make_sac(tiny, ratio=1, encoder_attention="causal", anchor_embedding="none")
    randomize_trainables(comp)
    with torch.no_grad():
        comp.lm_embedding.zero_()
    ids = comp.context_ids(TEXT)
    (ctx,) = comp.compress_ids([ids])
    with torch.no_grad():
        base_out = comp.lm(input_ids=torch.tensor([ids]), use_cache=False)
        with comp.decoder_mode():
            off = comp.lm(input_ids=torch.tensor([ids]), use_cache=False)
    assert not torch.allclose(base_out.logits, off.logits)  # adapter active by default
    # ...and the encoder really used it: its KV differs from the frozen model's. A compressor
    # without an adapter of its own may share the model object: it runs the frozen base.
    frozen = degenerate_sac(tiny)
    (plain,) = frozen.compress_ids([ids])
    assert not torch.allclose(ctx.keys[1], plain.keys[1])
    # The encoder adapter does not leak into the decoder: no shared cache object remains.
    assert isinstance(ctx.to_dynamic_cache(), DynamicCache)


def test_short_chunks_ride_in_a_row_with_room():
    from ctxcompress.methods.encoding import packed_rows

    assert packed_rows([20, 4], 25, 5) == [[0, 1]]
    assert packed_rows([20, 6, 4, 3], 25, 5) == [[0, 2], [1, 3]]  # 6 is not short: own row
    assert packed_rows([24, 4], 25, 5) == [[0], [1]]  # no room: a row of its own


@pytest.mark.parametrize(
    "arch,attention",
    [
        ("llama", "bidirectional"),
        ("llama", "causal"),
        ("gemma3", "bidirectional"),
        ("gemma3", "causal"),
    ],
)
def test_a_short_chunk_packed_behind_another_gives_the_same_kv(arch, attention, monkeypatch):
    """A short remainder chunk (24 = 20 + 4 tokens, 43 = 20 + 20 + 3) is packed behind a
    full chunk: one forward pass, each chunk seeing only itself — the same anchors' KV as
    encoding every chunk in a row of its own (also with Gemma's sliding-window layers, whose
    mask is by position)."""
    from ctxcompress.methods import sac

    comp = make_sac(tiny_model(arch), ratio=4, chunk_size=20, encoder_attention=attention)
    randomize_trainables(comp)
    docs = [comp.context_ids(TEXT)[:24], comp.context_ids(TEXT)[:43]]
    passes = []
    encode = comp._encode_rows
    monkeypatch.setattr(comp, "_encode_rows", lambda rows: passes.append(rows) or encode(rows))
    packed = comp.compress_ids(docs)
    assert len(passes) == 1
    assert sorted(len(c.ids) for row in passes[0] for c in row) == [3, 4, 20, 20, 20]
    assert max(len(row) for row in passes[0]) == 2
    monkeypatch.setattr(sac, "packed_rows", lambda lengths, *_: [[i] for i in range(len(lengths))])
    alone = comp.compress_ids(docs)
    assert len(passes) > 2  # the short chunks now in batches of their own
    for a, b in zip(packed, alone, strict=True):
        assert a.positions.tolist() == b.positions.tolist()
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
