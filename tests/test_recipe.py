"""The small-budget levers of METHODS.md §7: decoder positions, attention sinks, learned-vector
init, and distillation from the uncompressed model (issue: compressors that learn)."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.errors import InvalidInputError
from ctxcompress.methods.encoding import prefill_kv
from ctxcompress.methods.loss import distillation_kl
from ctxcompress.positions import centre_offsets, sac_anchor_offsets, sink_count
from ctxcompress.testing import tiny_model

from .conftest import TEXT, randomize_trainables

KV_METHODS = ("sac", "epl", "500x")
ALL_LEARNED = ("sac", "epl", "500x", "icae", "pic")


def build(method, base=None, **options):
    options = {"lora_rank": 4, "lora_alpha": 8, "ratio": 4, "chunk_size": 16, **options}
    return cc.build_compressor(method, base or tiny_model(), **options)


def long_ids(comp, n):
    ids = comp.context_ids(TEXT * 4)
    assert len(ids) >= n
    return ids[:n]


# ----------------------------------------------------------------------------- PIC positions
@pytest.mark.parametrize("method", ["pic", "icae", "500x"])
def test_decoder_positions_follow_the_largest_memory_position(method):
    """Regression: with a short last chunk, PIC's last memory group sits *below* the group
    before it; the question used to continue after the last entry, i.e. among the memory
    positions. It must start after every compressed entry."""
    comp = build(method, ratio=2, chunk_size=16)  # groups of 8 after 16-token chunks
    randomize_trainables(comp)
    ctx = comp.compress_ids([long_ids(comp, 16 * 2 + 3)])[0]  # last chunk: 3 tokens
    positions = ctx.positions
    assert int(positions[-1]) < int(positions.max())  # the layout that triggered the bug
    row = comp.decoder_prompt(ctx, comp.question_ids("Where?"))
    question = row.positions[-len(comp.question_ids("Where?")) - 1 :]  # [LM] + question
    assert int(question[0]) == int(positions.max()) + 1
    assert bool((question.diff() == 1).all())
    if ctx.kind == "embeds":  # the soft prompt's own positions lie before all of them
        assert int(row.positions[: ctx.compressed_length].max()) < int(question[0])


# ----------------------------------------------------------------------------- sinks
def test_sink_offsets_keep_the_budget():
    for chunk_len in (1, 2, 5, 16, 17, 510):
        for ratio in (1, 2, 4, 16):
            budget = len(sac_anchor_offsets(chunk_len, ratio))
            for sink in (0, 1, 3, 5, 40):
                kept = sink_count(chunk_len, ratio, sink) if sink else 0
                offsets = sac_anchor_offsets(chunk_len, ratio, sink)
                assert kept + len(offsets) == budget
                assert all(kept <= o < chunk_len for o in offsets)
                assert offsets == sorted(set(offsets))
    assert centre_offsets(0, 8, 2) == [2, 6]
    with pytest.raises(ValueError):
        centre_offsets(0, 2, 3)


@pytest.mark.parametrize("method", ALL_LEARNED)
def test_sink_counts_inside_the_budget(method):
    plain, sunk = build(method), build(method, sink_tokens=3)
    for n in (2, 7, 16, 17, 40):
        ids = long_ids(plain, n)
        a, b = plain.compress_ids([ids])[0], sunk.compress_ids([ids])[0]
        assert a.compressed_length == b.compressed_length == sunk.compressed_length(n)
        budget0 = len(sac_anchor_offsets(min(n, 16), 4))
        kept = min(3, budget0)
        assert b.positions[:kept].tolist() == list(range(1, kept + 1))  # 1-based positions


@pytest.mark.parametrize("method", KV_METHODS)
def test_sink_kv_is_the_frozen_models_own_kv(method):
    """A sink token's KV equals the frozen model's own KV for it, whatever the adapter and
    the learned vectors hold."""
    base = tiny_model()
    comp = build(method, base, sink_tokens=3)
    randomize_trainables(comp)
    ids = long_ids(comp, 30)
    ctx = comp.compress_ids([ids])[0]
    with torch.no_grad(), comp.decoder_mode():
        k, v = prefill_kv(comp.lm, [ids[:3]], 1, 1)[0]
    # Same values as an ordinary causal prefill of the first 3 tokens with the adapter off.
    with torch.no_grad(), comp.decoder_mode():
        out = comp.lm(torch.tensor([ids[:3]]), position_ids=torch.tensor([[1, 2, 3]]))
    layer0 = out.past_key_values.layers[0]
    torch.testing.assert_close(ctx.keys[0, :, :3], layer0.keys[0])
    torch.testing.assert_close(ctx.keys[:, :, :3], k)
    torch.testing.assert_close(ctx.values[:, :, :3], v)


@pytest.mark.parametrize("method", ["icae", "pic"])
def test_soft_prompt_sink_is_the_real_token_embeddings(method):
    comp = build(method, sink_tokens=2)
    randomize_trainables(comp)
    ids = long_ids(comp, 30)
    ctx = comp.compress_ids([ids])[0]
    table = comp.lm.get_input_embeddings().weight
    torch.testing.assert_close(ctx.embeds[:2], table[torch.tensor(ids[:2])])
    assert ids[0] == comp.tokenizer.bos_token_id


@pytest.mark.parametrize("method", ALL_LEARNED)
def test_sink_batched_equals_one_by_one(method):
    comp = build(method, sink_tokens=2)
    randomize_trainables(comp)
    docs = [long_ids(comp, n) for n in (3, 20, 37)]
    together = comp.compress_ids(docs)
    for doc, ctx in zip(docs, together, strict=True):
        alone = comp.compress_ids([doc])[0]
        for name in ("keys", "values", "embeds"):
            if getattr(ctx, name) is not None:
                torch.testing.assert_close(getattr(ctx, name), getattr(alone, name))


@pytest.mark.parametrize("method", KV_METHODS)
def test_a_repeated_sink_is_prefilled_once_outside_training(method, monkeypatch):
    """Contexts that start with the same sink tokens (BOS + the context prefix: all of them)
    reuse its frozen KV at inference — the same values as a fresh prefill — and get a fresh
    one when the frozen weights in place change (another storage, a bfloat16 copy), in every
    training step and with gradients on; the memo stays bounded."""
    from ctxcompress.methods import base as base_module
    from ctxcompress.training.precision import FrozenWeightsInLowPrecision

    comp = build(method, sink_tokens=3)
    randomize_trainables(comp)
    prefilled = []
    original = comp._prefill_sinks

    def counting(rows):
        prefilled.append([tuple(r) for r in rows])
        return original(rows)

    monkeypatch.setattr(comp, "_prefill_sinks", counting)
    docs = [long_ids(comp, n) for n in (20, 37)]
    assert docs[0][:3] == docs[1][:3]
    first = comp.compress_ids(docs)
    again = comp.compress_ids(docs[::-1])
    assert prefilled == [[tuple(docs[0][:3])]]  # one row, once
    torch.testing.assert_close(again[1].keys, first[0].keys)
    fresh = original([docs[0][:3]])[0]
    torch.testing.assert_close(first[0].keys[:, :, :3], fresh[0])
    # Other frozen weights in place (another storage): another key, a fresh prefill.
    weight = comp._frozen_linear_weight()
    kept = weight.data
    weight.data = kept.clone()
    comp.compress_ids(docs[:1])
    assert len(prefilled) == 2
    weight.data = kept
    comp.compress_ids(docs[:1])  # the first weights are back: their entry is still good
    assert len(prefilled) == 2
    # bfloat16 steps (a low-precision copy under autocast) and training never reuse one.
    low = FrozenWeightsInLowPrecision([comp.lm], comp.trainable_parameters().values())
    with low.active(), torch.autocast("cpu", dtype=torch.bfloat16):
        comp.compress_ids(docs[:1])
    assert len(prefilled) == 3
    comp.train()  # what a training step runs
    comp.encode_ids(docs[:1])
    comp.encode_ids(docs[:1])
    assert len(prefilled) == 5
    comp.eval()  # with gradients on (a caller differentiating through it): fresh as well
    comp.encode_ids(docs[:1])
    assert len(prefilled) == 6
    comp.eval()
    monkeypatch.setattr(base_module, "SINK_CACHE_SIZE", 2)
    other = [[d[0], (d[1] + i) % 50 + 3, *d[2:]] for i, d in enumerate(docs * 2)]
    comp.compress_ids(other)
    assert len(comp._sink_cache) == 2


def test_sink_tokens_larger_than_the_budget_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="sink_tokens=4 leaves nothing"):
        build("sac", sink_tokens=4)  # a 16-token chunk keeps 4 entries at ratio 4
    with pytest.raises(InvalidInputError, match="sink_tokens must be an integer"):
        build("pic", sink_tokens=-1)
    with pytest.raises(InvalidInputError, match="hard baselines"):
        cc.build_compressor("truncation", tiny_model(), sink_tokens=2)


def test_sink_survives_save_and_load(tmp_path):
    comp = build("sac", sink_tokens=2)
    randomize_trainables(comp)
    comp.save_pretrained(tmp_path / "c")
    again = cc.load_compressor(tmp_path / "c", base_model=tiny_model())
    assert again.config.sink_tokens == 2
    ids = long_ids(comp, 30)
    torch.testing.assert_close(comp.compress_ids([ids])[0].keys, again.compress_ids([ids])[0].keys)


def test_compressor_saved_before_the_new_options_loads_with_the_old_behaviour(tmp_path):
    """A saved config without sink_tokens / embedding_init predates them: it reloads with
    the values it was trained with (0, normal), whatever today's defaults are."""
    import json

    comp = build("sac")
    comp.save_pretrained(tmp_path / "c")
    header = json.loads((tmp_path / "c" / "ctxcompress.json").read_text())
    for key in ("sink_tokens", "embedding_init"):
        header["config"].pop(key)
    (tmp_path / "c" / "ctxcompress.json").write_text(json.dumps(header))
    config = type(comp.config).from_dict(header["config"], saved=True)
    assert (config.sink_tokens, config.embedding_init) == (0, "normal")
    # ...and keeps its fingerprint, so the contexts it made stay readable.
    randomize_trainables(comp)
    comp.save_pretrained(tmp_path / "d")
    header = json.loads((tmp_path / "d" / "ctxcompress.json").read_text())
    for key in ("sink_tokens", "embedding_init", "encoder_attention_warmup_steps"):
        header["config"].pop(key)
    (tmp_path / "d" / "ctxcompress.json").write_text(json.dumps(header))
    again = cc.load_compressor(tmp_path / "d", base_model=tiny_model())
    assert again.fingerprint == header["fingerprint"] == comp.fingerprint
    assert build("sac", sink_tokens=1).fingerprint != build("sac").fingerprint


# ----------------------------------------------------------------------------- init
@pytest.mark.parametrize("method", ["sac", "icae", "pic"])
def test_table_init_puts_learned_vectors_at_token_scale(method):
    base = tiny_model()
    table = base.model.get_input_embeddings().weight.detach()
    comp = build(method, base, embedding_init="table", autoencoding=True)
    vectors = [comp.lm_embedding, comp.ae_embedding]
    if hasattr(comp, "memory_embedding"):
        vectors.append(comp.memory_embedding)
    table_std = float(table.std())
    for v in vectors:
        assert 0.5 * table_std < float(v.detach().std()) < 2 * table_std
    if method == "sac":  # added to token embeddings: stays small
        assert float(comp.anchor_embedding.detach().std()) < 0.05
    normal = build(method, embedding_init="normal")
    assert float(normal.lm_embedding.detach().std()) < 0.05


# ----------------------------------------------------------------------------- distillation
def test_kl_of_identical_distributions_is_zero_and_positive_otherwise():
    logits = torch.randn(5, 11)
    assert float(distillation_kl(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_kl(logits, logits + torch.randn(5, 11))) > 0


def _batch(comp):
    ctx = [comp.context_ids(TEXT), comp.context_ids(TEXT[:60])]
    prompts = [comp.question_ids("Where?"), comp.question_ids("When?")]
    return ctx, prompts, [[5, 6, 7], [8, 9]]


def test_distillation_weight_zero_is_the_plain_loss_and_self_teacher_gives_kl_zero():
    comp = build("sac")
    randomize_trainables(comp)
    ctx, prompts, targets = _batch(comp)
    plain, n = comp(ctx, prompts, targets)
    with torch.no_grad():
        teacher = comp.target_logits(ctx, prompts, targets).logits
    off, n_off = comp(ctx, prompts, targets, teacher_logits=teacher, teacher_rows=[0, 1])
    assert (float(off.detach()), n_off) == (float(plain.detach()), n)
    assert comp.last_loss_terms["kl"] == pytest.approx(0.0, abs=1e-5)
    weighted, _ = comp(
        ctx, prompts, targets, teacher_logits=teacher, teacher_rows=[0, 1], distill_weight=3.0
    )
    assert float(weighted.detach()) == pytest.approx(float(plain.detach()), abs=1e-4)
    # Another teacher: the KL term is positive and enters with weight * T^2.
    other = teacher + torch.randn(teacher.shape, generator=torch.Generator().manual_seed(0))
    w, t = 0.5, 2.0
    loss, _ = comp(
        ctx,
        prompts,
        targets,
        teacher_logits=other,
        teacher_rows=[0, 1],
        distill_weight=w,
        temperature=t,
    )
    kl = comp.last_loss_terms["kl"]
    assert kl > 0
    assert float(loss.detach()) == pytest.approx(float(plain.detach()) + w * t * t * kl, rel=1e-5)


def test_distillation_over_some_rows_only():
    comp = build("sac")
    ctx, prompts, targets = _batch(comp)
    with torch.no_grad():
        out = comp.target_logits(ctx, prompts, targets)
    teacher, rows = out.logits, out.rows
    second = teacher[rows == 1]
    comp(ctx, prompts, targets, teacher_logits=second, teacher_rows=[1], distill_weight=1.0)
    assert comp.last_loss_terms["kl"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(InvalidInputError, match="teacher logits"):
        comp(ctx, prompts, targets, teacher_logits=teacher, teacher_rows=[1], distill_weight=1.0)


# ----------------------------------------------------------------------------- SAC warm start
def test_sac_encoder_attention_warmup_is_causal_while_training_only():
    warm = build("sac", encoder_attention_warmup_steps=2)
    causal = build("sac", encoder_attention="causal")
    bidirectional = build("sac")
    for comp in (warm, causal, bidirectional):
        randomize_trainables(comp)
    ids = [long_ids(warm, 30)]

    def keys(comp):
        with torch.no_grad():
            return comp.encode_ids(ids)[0].keys

    warm.train()
    warm.training_step = 1
    torch.testing.assert_close(keys(warm), keys(causal))
    warm.training_step = 2
    torch.testing.assert_close(keys(warm), keys(bidirectional))
    warm.training_step = 0
    torch.testing.assert_close(
        warm.compress_ids(ids)[0].keys, bidirectional.compress_ids(ids)[0].keys
    )
    assert not torch.allclose(keys(causal), keys(bidirectional))
    with pytest.raises(InvalidInputError, match="encoder_attention_warmup_steps"):
        build("sac", encoder_attention_warmup_steps=-1)


def test_trainer_tells_the_compressor_its_step(qa_file, tmp_path):
    from ctxcompress.training import Trainer

    from .test_training import config

    seen = []
    cfg = config("sac", qa_file, tmp_path / "w", steps=3)
    cfg.method_options["encoder_attention_warmup_steps"] = 2
    trainer = Trainer(cfg, on_step=lambda step, m: seen.append(trainer.compressor.training_step))
    trainer.run()
    assert seen == [0, 1, 2]  # the step count before each optimizer step
