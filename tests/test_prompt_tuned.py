"""Prompt-tuned bounds (full context / truncation / no context + a learned soft prompt)."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, randomize_trainables


def build(base=None, **options):
    options.setdefault("ratio", 4)
    return cc.build_compressor("prompt_tuned", base or tiny_model(), **options)


@pytest.mark.parametrize("context,hard", [("full", "full_context"), ("truncation", "truncation")])
def test_the_context_is_the_hard_baselines_kv(context, hard):
    base = tiny_model()
    tuned = build(base, context=context, prompt_vectors=2)
    plain = cc.build_compressor(hard, base, ratio=4)
    for text in (TEXT * 7, "Short."):
        a, b = tuned.compress(text), plain.compress(text)
        assert (
            a.compressed_length == b.compressed_length == tuned.compressed_length(a.original_length)
        )
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
        assert torch.equal(a.positions, b.positions)


def test_no_context_keeps_nothing():
    comp = build(context="none")
    ctx = comp.compress(TEXT * 3)
    assert ctx.compressed_length == 0 and comp.compressed_length(ctx.original_length) == 0
    assert isinstance(comp.generate(ctx, "Who?", max_new_tokens=3), str)


def test_soft_prompt_opens_the_question_and_only_it_is_trained():
    comp = build(context="truncation", prompt_vectors=3)
    assert set(comp.trainable_parameters()) == {"prompt_embedding", "lm_embedding"}
    randomize_trainables(comp)
    ctx = comp.compress(TEXT * 4)
    question = comp.question_ids("Who wrote it?")
    row = comp.decoder_prompt(ctx, question)
    embed = comp.lm.get_input_embeddings()
    assert row.embeds.shape[0] == 3 + 1 + len(question)
    assert torch.equal(row.embeds[:3], comp.prompt_embedding)
    assert torch.equal(row.embeds[3], comp.lm_embedding)
    assert torch.equal(row.embeds[4:], embed(torch.tensor(question)))
    # Contiguous positions right after the kept tokens, like an ordinary prompt.
    start = ctx.compressed_length
    assert row.positions.tolist() == list(range(start, start + row.embeds.shape[0]))
    # Without prompt vectors only [LM] opens the question.
    bare = build(context="truncation", prompt_vectors=0)
    assert bare.decoder_prompt(ctx, question).embeds.shape[0] == 1 + len(question)


def test_prompt_starts_from_vocabulary_embeddings_by_default():
    comp = build(prompt_vectors=4)
    table = comp.lm.get_input_embeddings().weight
    for vector in comp.prompt_embedding:
        assert (table == vector).all(-1).any()
    again = build(prompt_vectors=4)
    assert torch.equal(comp.prompt_embedding, again.prompt_embedding)  # seeded


def test_training_reaches_only_the_soft_prompt():
    comp = build(context="full", prompt_vectors=2)
    comp.train()
    ids = comp.context_ids(TEXT)
    loss, n = comp([ids], [comp.question_ids("Who?")], [[5, 6, 7]])
    (loss / n).backward()
    assert comp.prompt_embedding.grad is not None and comp.prompt_embedding.grad.abs().sum() > 0
    assert comp.lm_embedding.grad is not None
    assert all(p.grad is None for p in comp.lm.parameters())


@pytest.mark.parametrize("context,hard", [("truncation", "truncation"), ("full", "full_context")])
def test_trained_truncation_encodes_the_kept_tokens_with_its_lora(context, hard):
    """Trained truncation, and trained full context (the fair benchmark's upper bound)."""
    base = tiny_model()
    comp = build(base, context=context, lora_rank=4, lora_alpha=8)
    randomize_trainables(comp)
    assert any("lora_" in name for name in comp.trainable_parameters())
    ctx = comp.compress(TEXT * 6)
    frozen = cc.build_compressor(hard, tiny_model(), ratio=4).compress(TEXT * 6)
    assert ctx.compressed_length == frozen.compressed_length
    assert not torch.allclose(ctx.keys, frozen.keys)  # the encoder is the LoRA model
    # The decoder is still the frozen base.
    with comp.decoder_mode():
        out = comp.lm(input_ids=torch.tensor([[1, 2, 3]])).logits
    reference = tiny_model().model(input_ids=torch.tensor([[1, 2, 3]])).logits
    torch.testing.assert_close(out, reference)


def test_save_load_round_trip(tmp_path):
    comp = build(context="truncation", prompt_vectors=2)
    randomize_trainables(comp)
    comp.save_pretrained(tmp_path / "pt")
    again = cc.load_compressor(tmp_path / "pt", base_model=tiny_model())
    assert again.config.context == "truncation" and again.config.prompt_vectors == 2
    torch.testing.assert_close(again.prompt_embedding, comp.prompt_embedding)
    ctx = comp.compress(TEXT * 3)
    assert again.generate(ctx, "Who?", max_new_tokens=4) == comp.generate(
        ctx, "Who?", max_new_tokens=4
    )


def test_bad_options_are_refused():
    with pytest.raises(cc.InvalidInputError, match="context"):
        build(context="half")
    with pytest.raises(cc.InvalidInputError, match="prompt_vectors"):
        build(prompt_vectors=-1)
