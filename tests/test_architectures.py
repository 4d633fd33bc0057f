"""The support matrix (issue 23; docs/models.md): every method on tiny random-init models of
each architecture transformers provides that users run today — compress, generate, batched
questions, shared-prefix decoding, a training step, save/load — plus SAC's full-context
invariant per architecture, and the sliding-window rule (local layers see entries by
position: ``ctxcompress.windows``)."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

import ctxcompress as cc
from ctxcompress import generation
from ctxcompress.errors import ModelLoadError
from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.models import BaseModel
from ctxcompress.shared_prefix import supports
from ctxcompress.testing import tiny_model, tiny_tokenizer
from ctxcompress.training import qa_example
from ctxcompress.windows import local_window
from tests.conftest import TEXT, TINY_METHOD_OPTIONS, randomize_trainables
from tests.test_sac import degenerate_sac, reference_full_context

SUPPORTED = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3"]
OPTIONS = TINY_METHOD_OPTIONS
QUESTIONS = ["Who wrote the report?", "Where did they meet?", "When?"]


def build(method: str, arch: str, **extra) -> cc.Compressor:
    comp = cc.build_compressor(method, tiny_model(arch), ratio=4, **OPTIONS[method], **extra)
    randomize_trainables(comp)
    return comp


@pytest.mark.parametrize("arch", SUPPORTED)
def test_sac_r1_reproduces_the_full_context(arch):
    """SAC at r=1, causal, without adapter: the compressed KV is the model's own cache, and the
    first answer logits and the greedy answer are the plain model's. With local layers
    (Gemma 3, window 16 < the ~140-token context) the [LM] token gets its own position
    (offset 1): the plain model windows by index, ctxcompress by position, and the two agree
    when positions run without a repeat (SAC's default puts [LM] at L, the last context
    token's position)."""
    windowed = local_window(tiny_model(arch).model.config) is not None
    comp = degenerate_sac(tiny_model(arch), decoder_position_offset=int(windowed))
    ctx_ids = comp.context_ids(TEXT * 2)
    (ctx,) = comp.compress_ids([ctx_ids])
    q_ids = comp.question_ids(QUESTIONS[0])
    ref_logits, ref_answer = reference_full_context(comp, ctx_ids, q_ids, max_new_tokens=8)
    logits = comp.decoder_forward([ctx], [q_ids])[0, -1]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert comp.generate(ctx, QUESTIONS[0], max_new_tokens=8) == ref_answer


@pytest.mark.parametrize("method", list(OPTIONS))
@pytest.mark.parametrize("arch", SUPPORTED)
def test_method_compresses_answers_in_batches_and_round_trips(arch, method, tmp_path, monkeypatch):
    comp = build(method, arch)
    texts = [TEXT * 3, "A short one about Paris."]
    batched_contexts = comp.compress(texts)
    alone = comp.compress(texts[1])
    for name in ("keys", "values", "embeds"):
        a, b = getattr(batched_contexts[1], name), getattr(alone, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ctx = batched_contexts[0]

    # Batched questions against one context = one by one; for KV contexts on a supported
    # model that batch runs through shared-prefix attention, which must change nothing.
    used_shared = []
    real = generation.shared_prefix_attention
    monkeypatch.setattr(
        generation,
        "shared_prefix_attention",
        lambda *a, **k: used_shared.append(1) or real(*a, **k),
    )
    batched = comp.generate(ctx, QUESTIONS, max_new_tokens=6)
    single = [comp.generate(ctx, q, max_new_tokens=6) for q in QUESTIONS]
    assert batched == single
    assert bool(used_shared) == (ctx.kind == "kv" and supports(comp.lm))
    # Exact shared-prefix attention everywhere but with local layers (the copies path there).
    assert supports(comp.lm) == (local_window(comp.lm.config) is None)

    comp.save_pretrained(tmp_path / "c")
    back = cc.load_compressor(tmp_path / "c", base_model=tiny_model(arch))
    assert back.fingerprint == comp.fingerprint
    again = back.compress(texts[0])
    for name in ("keys", "values", "embeds"):
        if getattr(ctx, name) is not None:
            torch.testing.assert_close(getattr(again, name), getattr(ctx, name))
    assert back.generate(again, QUESTIONS, max_new_tokens=6) == batched


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
@pytest.mark.parametrize("arch", SUPPORTED)
def test_a_training_step_reaches_exactly_the_trainable_parameters(arch, method):
    comp = build(method, arch)
    comp.train()
    examples = [qa_example(comp, TEXT, "Who wrote the report?", "the committee")]
    loss, count = comp(
        [e.context_ids for e in examples],
        [e.prompt_ids for e in examples],
        [e.target_ids for e in examples],
    )
    (loss / count).backward()
    trainable = comp.trainable_parameters()
    assert trainable and torch.isfinite(loss)
    # A KV context is the layers' keys and values: the last layer's queries are never read,
    # so its q_proj adapter (the only one) gets no gradient there. Everything else does.
    last_query = f"layers.{comp.lm.config.num_hidden_layers - 1}.self_attn.q_proj."
    kv_method = comp.compress(TEXT).kind == "kv"
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert all(kv_method and last_query in n for n in no_grad), no_grad
    frozen = [p for p in comp.lm.parameters() if not any(p is t for t in trainable.values())]
    assert all(p.grad is None for p in frozen)


def test_phi3_fused_projection_gets_the_adapter():
    """Phi-3 fuses q/k/v into ``qkv_proj``: the papers' q/v default becomes that module."""
    comp = build("sac", "phi3")
    adapted = [n for n in comp.trainable_parameters() if ".lora_" in n]
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapted}
    assert names == {"qkv_proj"}
    with pytest.raises(ModelLoadError, match="match no linear layer.*qkv_proj"):
        cc.build_compressor("sac", tiny_model("phi3"), lora_target_modules=("wq",), lora_rank=4)


def _windowed_mistral(window: int) -> BaseModel:
    tokenizer = tiny_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        sliding_window=window,
    )
    torch.manual_seed(0)
    return BaseModel(MistralForCausalLM(config).eval(), tokenizer, source="tiny-mistral-window")


def test_local_layers_see_context_entries_by_position():
    """The rule (windows.py): with every layer local (window 32), the answer cannot depend on
    a compressed entry whose position lies more than the window before every decoder query,
    and does depend on one inside it — whatever the entry's index in the cache."""
    base = _windowed_mistral(32)
    comp = cc.build_compressor("sac", base, ratio=4, lora_rank=0)
    ctx = comp.compress(TEXT * 2)
    q_ids = comp.question_ids(QUESTIONS[0])
    first_query = comp.first_decoder_position(ctx)
    logits = comp.decoder_forward([ctx], [q_ids])[0, -1]
    far = (ctx.positions <= first_query - 1 - 32).nonzero().flatten()
    near = (ctx.positions > first_query - 32).nonzero().flatten()
    assert len(far) > 10 and len(near) > 3  # sparse anchors: the window holds few entries
    for entries, changes in ((far, False), (near[-1:], True)):
        moved = cc.CompressedContext(**{**vars(ctx), "keys": ctx.keys.clone()})
        moved.keys[:, :, entries] += 5.0
        other = comp.decoder_forward([moved], [q_ids])[0, -1]
        assert (not torch.allclose(other, logits, atol=1e-6)) == changes


@pytest.mark.parametrize("method", list(OPTIONS))
def test_a_fully_windowed_model_answers_in_batches(method):
    """Mistral with a 32-token window in every layer (no layer types: one windowed mask):
    batched contexts = one by one, batched questions = one by one."""
    base = _windowed_mistral(32)
    comp = cc.build_compressor(method, base, ratio=4, **OPTIONS[method])
    randomize_trainables(comp)
    texts = [TEXT * 3, "A short one about Paris."]
    both, alone = comp.compress(texts), comp.compress(texts[1])
    for name in ("keys", "values", "embeds"):
        if getattr(alone, name) is not None:
            torch.testing.assert_close(getattr(both[1], name), getattr(alone, name))
    batched = comp.generate(both[0], QUESTIONS, max_new_tokens=5)
    assert batched == [comp.generate(both[0], q, max_new_tokens=5) for q in QUESTIONS]
    assert not supports(base.model)


def test_a_window_that_covers_every_position_is_global_attention():
    base = _windowed_mistral(4096)  # window beyond the model's 2048 positions
    assert local_window(base.model.config) is None and supports(base.model)
    comp = degenerate_sac(base)
    ctx_ids = comp.context_ids(TEXT)
    (ctx,) = comp.compress_ids([ctx_ids])
    q_ids = comp.question_ids(QUESTIONS[0])
    ref_logits, _ = reference_full_context(comp, ctx_ids, q_ids, max_new_tokens=1)
    logits = comp.decoder_forward([ctx], [q_ids])[0, -1]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_the_cli_names_every_tiny_architecture():
    for arch in SUPPORTED:
        assert cc.load_base_model(f"tiny-{arch}").model.config.model_type.startswith(arch)
    comp = cc.build_compressor("sac", cc.load_base_model("tiny-gemma3"), lora_rank=4)
    assert local_window(comp.lm.config) == 16


def test_gemma3_composition_is_refused_and_growing_matches_compressing_the_whole():
    """Gemma 3's local and global layers use different RoPE bases: keys cannot be re-rotated
    with one rule yet, so composition is a clear error; SAC's growing context (no
    re-rotation: new text is encoded at its own positions) is the whole-text compression."""
    from ctxcompress.errors import InvalidInputError

    comp = build("sac", "gemma3")
    a, b = comp.compress(["One text about Paris.", "Another about Rome."])
    with pytest.raises(InvalidInputError, match="different RoPE per layer type"):
        comp.compose([a, b])
    head, tail = TEXT * 2, " And then the committee met again in Paris."
    grown = comp.extend(comp.compress(head, keep_tail=True), tail)
    whole = comp.compress(head + tail, keep_tail=True)
    torch.testing.assert_close(grown.keys, whole.keys, atol=1e-5, rtol=1e-5)
    assert comp.generate(grown, QUESTIONS[0], max_new_tokens=5) == comp.generate(
        whole, QUESTIONS[0], max_new_tokens=5
    )
