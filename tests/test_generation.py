"""Decoding against compressed contexts: batching, limits, EOS and stop strings."""

from __future__ import annotations

import pytest
import torch

from ctxcompress.generation import greedy_generate
from ctxcompress.models import cache_kwargs
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, make_sac, randomize_trainables

QUESTIONS = [
    "Who wrote the report?",
    "Where?",
    "In which year did the committee meet in Paris?",
    "What do anchors collect?",
    "Why?",
]


@pytest.fixture
def sac(tiny_any):
    comp = make_sac(tiny_any, ratio=4)
    randomize_trainables(comp)
    return comp


def test_many_questions_in_one_call_equal_one_at_a_time(sac):
    ctx = sac.compress(TEXT * 8)
    batched = sac.generate(ctx, QUESTIONS, max_new_tokens=10)
    alone = [sac.generate(ctx, q, max_new_tokens=10) for q in QUESTIONS]
    assert batched == alone
    assert sac.generate(ctx, QUESTIONS, max_new_tokens=10, batch_size=2) == batched


def test_pairs_of_different_contexts_batch_like_single_calls(sac):
    texts = [TEXT * 8, "Short context.", TEXT * 2]
    contexts = sac.compress(texts)
    qs = QUESTIONS[:3]
    paired = sac.generate(contexts, qs, max_new_tokens=8)
    assert paired == [
        sac.generate(c, q, max_new_tokens=8) for c, q in zip(contexts, qs, strict=True)
    ]


def _rows(comp, ctx, questions):
    return [comp.decoder_prompt(ctx, comp.question_ids(q)) for q in questions]


def test_max_new_tokens_is_respected():
    comp = make_sac(tiny_model(), ratio=2)
    ctx = comp.compress(TEXT)
    with torch.inference_mode(), comp.decoder_mode():
        rows = _rows(comp, ctx, ["Who?", "Where is it?"])
        for n in (1, 3, 7):
            out = greedy_generate(comp.lm, comp.tokenizer, rows, max_new_tokens=n, eos_token_ids=[])
            assert [len(g.token_ids) for g in out] == [n, n]
            assert {g.finish_reason for g in out} == {"length"}


def test_eos_stops_a_row_and_is_not_in_the_answer():
    comp = make_sac(tiny_model(), ratio=2)
    ctx = comp.compress(TEXT)
    with torch.inference_mode(), comp.decoder_mode():
        rows = _rows(comp, ctx, ["Who?", "Where is it?"])
        free = greedy_generate(comp.lm, comp.tokenizer, rows, max_new_tokens=6, eos_token_ids=[])
        first = free[0].token_ids[0]
        stopped = greedy_generate(
            comp.lm, comp.tokenizer, rows, max_new_tokens=6, eos_token_ids=[first]
        )
    assert stopped[0].text == "" and stopped[0].token_ids == []  # row 0 starts with "EOS"
    assert stopped[0].finish_reason == "eos"
    assert len(free[0].token_ids) == 6


def test_stop_strings_cut_the_answer():
    comp = make_sac(tiny_model(), ratio=2)
    ctx = comp.compress(TEXT)
    full = comp.generate(ctx, "Who?", max_new_tokens=12)
    assert len(full) >= 4
    stop = full[2:4]
    cut = comp.generate(ctx, "Who?", max_new_tokens=12, stop=[stop, "\x00never"])
    assert cut == full[: full.find(stop)].strip()
    assert stop not in cut


def test_question_positions_continue_from_L(sac):
    """[LM] sits at position L (+ offset) whatever the compressed length is."""
    ctx = sac.compress(TEXT * 3)
    prompt = sac.decoder_prompt(ctx, sac.question_ids("Who?"))
    assert prompt.positions[0] == ctx.original_length
    assert prompt.positions.tolist() == list(
        range(ctx.original_length, ctx.original_length + len(prompt.positions))
    )
    assert prompt.embeds.shape[0] == 1 + len(sac.question_ids("Who?"))


def test_one_context_many_questions_shares_one_kv_context(sac, monkeypatch):
    """Many questions against one context expand a single KV context (no copy per row)."""
    from ctxcompress import generation

    seen = []
    real = generation._stack_kv_contexts

    def spy(model, prompts, device):
        seen.append(len({id(p.kv_context) for p in prompts}))
        return real(model, prompts, device)

    monkeypatch.setattr(generation, "_stack_kv_contexts", spy)
    ctx = sac.compress(TEXT * 3)
    sac.generate(ctx, QUESTIONS, max_new_tokens=2)
    assert seen == [1]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_reserved_cache_decodes_exactly_like_a_dynamic_cache(arch):
    from transformers import DynamicCache

    from ctxcompress.generation import ReservedLayer, reserve_cache

    base = tiny_model(arch)
    model = base.model
    prompt = torch.randint(5, 100, (3, 7))
    steps = torch.randint(5, 100, (3, 6))

    def run(cache):
        outs = [model(input_ids=prompt, **cache_kwargs(cache), use_cache=True).logits]
        for t in range(steps.shape[1]):
            outs.append(
                model(input_ids=steps[:, t : t + 1], **cache_kwargs(cache), use_cache=True).logits
            )
        return outs, cache

    with torch.inference_mode():
        expected, _ = run(DynamicCache(config=model.config))
        # Capacity 9 < 7 + 6: the reservation must grow once, transparently.
        got, cache = run(reserve_cache(None, model, capacity=9))
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)
    layer = cache.layers[0]
    assert isinstance(layer, ReservedLayer) and cache.get_seq_length() == 13
    # Decoding steps write in place: the returned keys are views of one buffer.
    assert layer.keys.data_ptr() == layer._buffers[0].data_ptr()
    # A cache with a prefix keeps it.
    with torch.inference_mode():
        prefilled = DynamicCache(config=model.config)
        model(input_ids=prompt, **cache_kwargs(prefilled), use_cache=True)
        keys = prefilled.layers[1].keys.clone()
        reserved = reserve_cache(prefilled, model, capacity=20)
    torch.testing.assert_close(reserved.layers[1].keys, keys)


def test_shared_prefix_attention_equals_one_copy_per_row(sac):
    """One context read once for all rows gives the logits of a copy per row."""
    from ctxcompress.generation import DecoderPrompt, build_decoder_batch
    from ctxcompress.shared_prefix import own_tokens_mask, shared_prefix_attention, supports

    model = sac.lm
    backend = model.config._attn_implementation  # sdpa or eager: both supported
    assert supports(model)
    ctx = sac.compress(TEXT * 9)
    rows = [sac.decoder_prompt(ctx, sac.question_ids(q)) for q in QUESTIONS[:3]]
    with torch.inference_mode(), sac.decoder_mode():
        copies = build_decoder_batch(model, rows)
        expected = model(
            inputs_embeds=copies.inputs_embeds,
            position_ids=copies.position_ids,
            attention_mask=copies.attention_mask,
            **cache_kwargs(copies.cache),
        ).logits
        own = build_decoder_batch(model, [DecoderPrompt(None, r.embeds, r.positions) for r in rows])
        with shared_prefix_attention(model, ctx):
            got = model(
                inputs_embeds=own.inputs_embeds,
                position_ids=own.position_ids,
                attention_mask=own_tokens_mask(own.attention_mask, own.inputs_embeds.shape[1]),
            ).logits
        assert model.config._attn_implementation == backend  # restored
    # Rows are left-padded: compare the real (unpadded) positions of each row.
    for row, n in enumerate(own.prompt_lengths):
        torch.testing.assert_close(got[row, -n:], expected[row, -n:], atol=1e-5, rtol=1e-4)


def test_shared_prefix_attention_is_only_used_where_it_is_exact():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ctxcompress.shared_prefix import supports

    assert supports(tiny_model("llama").model) and supports(tiny_model("qwen2").model)
    windowed = Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,  # layers from index 1 on use the window
    )
    assert windowed.layer_types == ["full_attention", "sliding_attention"]
    assert not supports(Qwen2ForCausalLM(windowed))
    # Qwen2's default keeps the window off below layer 28: every layer global, supported.
    windowed.layer_types = ["full_attention"] * 2
    assert supports(Qwen2ForCausalLM(windowed))


def test_shared_prefix_attention_in_bfloat16_matches_the_copies_closely():
    """Half-precision models: the shared path computes in float32, the copy path in bf16."""
    base = tiny_model()
    base.model.to(torch.bfloat16)
    comp = make_sac(base, ratio=4)
    randomize_trainables(comp)
    ctx = comp.compress(TEXT * 9)
    assert ctx.keys.dtype == torch.bfloat16
    rows = comp.generate(ctx, QUESTIONS[:4], max_new_tokens=6)  # shared prefix (4 rows)
    alone = [comp.generate(ctx, q, max_new_tokens=6) for q in QUESTIONS[:4]]  # copies path
    assert sum(a == b for a, b in zip(rows, alone, strict=True)) >= 3  # bf16 rounding may flip one
