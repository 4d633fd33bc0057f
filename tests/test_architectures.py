"""The support matrix (issue 23; docs/models.md): every method on tiny random-init models of
each architecture transformers provides that users run today — compress, generate, batched
questions, shared-prefix decoding, a training step, save/load — plus SAC's full-context
invariant per architecture, and the documented refusal of sliding-window models."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

import ctxcompress as cc
from ctxcompress import generation
from ctxcompress.errors import ModelLoadError
from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.models import BaseModel, sliding_window_problem
from ctxcompress.shared_prefix import supports
from ctxcompress.testing import tiny_model, tiny_tokenizer
from ctxcompress.training import qa_example
from tests.conftest import TEXT, TINY_METHOD_OPTIONS, randomize_trainables
from tests.test_sac import degenerate_sac, reference_full_context

SUPPORTED = ["llama", "qwen2", "qwen3", "mistral", "phi3"]
OPTIONS = TINY_METHOD_OPTIONS
QUESTIONS = ["Who wrote the report?", "Where did they meet?", "When?"]


def build(method: str, arch: str, **extra) -> cc.Compressor:
    comp = cc.build_compressor(method, tiny_model(arch), ratio=4, **OPTIONS[method], **extra)
    randomize_trainables(comp)
    return comp


@pytest.mark.parametrize("arch", SUPPORTED)
def test_sac_r1_reproduces_the_full_context(arch):
    """SAC at r=1, causal, without adapter: the compressed KV is the model's own cache, and the
    first answer logits and the greedy answer are the plain model's."""
    comp = degenerate_sac(tiny_model(arch))
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
    assert supports(comp.lm)  # every supported architecture has exact shared-prefix attention

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


@pytest.mark.parametrize("method", list(OPTIONS))
def test_sliding_window_models_are_refused_at_build_time(method):
    """Gemma 3 (local layers, window 16 here) and a windowed Mistral: a clear error naming the
    rule, never a context the model would read differently."""
    for base in (tiny_model("gemma3"), _windowed_mistral(32)):
        with pytest.raises(
            ModelLoadError, match=r"sliding-window attention in \d+ of its 2 layers \(window \d+ <"
        ):
            cc.build_compressor(method, base, ratio=4, **OPTIONS[method])
        assert not supports(base.model)


def test_a_window_that_covers_every_position_is_global_attention():
    base = _windowed_mistral(4096)  # window beyond the model's 2048 positions
    assert sliding_window_problem(base.model.config) is None and supports(base.model)
    comp = degenerate_sac(base)
    ctx_ids = comp.context_ids(TEXT)
    (ctx,) = comp.compress_ids([ctx_ids])
    q_ids = comp.question_ids(QUESTIONS[0])
    ref_logits, _ = reference_full_context(comp, ctx_ids, q_ids, max_new_tokens=1)
    logits = comp.decoder_forward([ctx], [q_ids])[0, -1]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_the_cli_names_every_tiny_architecture():
    for arch in SUPPORTED:
        assert cc.load_base_model(f"tiny-{arch}").model.config.model_type == arch
    with pytest.raises(ModelLoadError, match="sliding-window"):
        cc.build_compressor("sac", cc.load_base_model("tiny-gemma3"), lora_rank=4)
