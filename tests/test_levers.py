"""The levers of issue 38 that make compressors learn from little data: a decoder adapter
(lever 3), anchors chosen by the frozen model's scores (lever 1) and a ratio ramp (lever 2).
Each is an option; these are its invariants and its refusals."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.errors import InvalidInputError
from ctxcompress.methods.anchor_scores import (
    frozen_hidden,
    imitation_loss,
    reconstruction_importance,
    surprisal,
    top_scoring_offsets,
)
from ctxcompress.methods.lora import DECODER_ADAPTER, adapter_layers
from ctxcompress.positions import chunk_spans, sac_anchor_offsets
from ctxcompress.testing import tiny_model
from ctxcompress.training import Trainer
from tests.conftest import make_sac, randomize_trainables
from tests.test_training import config

TEXT = "The secret code of box 7 is walnut. It was stored in the attic, beside the lamp. " * 3
QUESTION = "What is the code of box 7?"


def decoder_weights(comp):
    return {n: p for n, p in comp.trainable_parameters().items() if f".{DECODER_ADAPTER}." in n}


def answer_logits(comp, text=TEXT):
    ctx = comp.compress(text)
    ids = comp.question_ids(QUESTION)
    with torch.no_grad():
        return ctx, comp.decoder_forward([ctx], [ids])


# --------------------------------------------------------------------------- lever 3


def test_decoder_adapter_off_is_todays_compressor_exactly():
    """decoder_lora_rank=0 is the default: same fingerprint, same logits as a compressor
    built without the option; and a fresh decoder adapter (LoRA B = 0) changes no logit."""
    plain = make_sac(tiny_model(), ratio=2)
    off = make_sac(tiny_model(), ratio=2, decoder_lora_rank=0)
    fresh = make_sac(tiny_model(), ratio=2, decoder_lora_rank=4)
    assert plain.fingerprint == off.fingerprint
    assert not off.has_decoder_adapter and fresh.has_decoder_adapter
    _, a = answer_logits(plain)
    _, b = answer_logits(off)
    _, c = answer_logits(fresh)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, atol=0, rtol=0)


def test_decoder_adapter_changes_only_the_decoder():
    """Trained decoder weights change the answer logits, never the compressed context (the
    encoder), the attention sink's KV or the full-context teacher (the frozen model)."""
    comp = make_sac(tiny_model(), ratio=2, decoder_lora_rank=4, sink_tokens=1)
    ctx_before, logits_before = answer_logits(comp)
    ids = comp.context_ids(TEXT)
    sink_before = comp.sink_kv([ids])[0]
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in decoder_weights(comp).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    ctx_after, logits_after = answer_logits(comp)
    torch.testing.assert_close(ctx_after.keys, ctx_before.keys, atol=0, rtol=0)
    torch.testing.assert_close(ctx_after.values, ctx_before.values, atol=0, rtol=0)
    sink_after = comp.sink_kv([ids])[0]
    assert all(torch.equal(x, y) for x, y in zip(sink_after, sink_before, strict=True))
    assert not torch.allclose(logits_after, logits_before)
    # Switching back: the encoder's adapter is the active one outside decoding.
    assert all(layer.active_adapters == ["default"] for layer in adapter_layers(comp.lm))


def test_decoder_adapter_trains_saves_and_loads(qa_file, tmp_path):
    cfg = config(
        "sac",
        qa_file,
        tmp_path / "run",
        steps=2,
        save_every=1000,
        warmup_steps=0,
    )
    cfg.method_options["decoder_lora_rank"] = 4
    trainer = Trainer(cfg, base_model=tiny_model())
    before = {n: p.detach().clone() for n, p in trainer.compressor.trainable_parameters().items()}
    assert decoder_weights(trainer.compressor), "the decoder adapter is trained"
    trainer.run()
    comp = trainer.compressor
    moved = {n for n, p in comp.trainable_parameters().items() if not torch.equal(p, before[n])}
    assert {n for n in decoder_weights(comp) if "lora_B" in n} <= moved
    assert any("lora_B.default" in n for n in moved)  # the encoder's still trains too
    loaded = cc.load_compressor(tmp_path / "run" / "compressor", base_model=tiny_model())
    assert loaded.has_decoder_adapter and loaded.fingerprint == comp.fingerprint
    assert (tmp_path / "run" / "compressor" / "adapter" / DECODER_ADAPTER).is_dir()
    _, a = answer_logits(comp)
    _, b = answer_logits(loaded)
    torch.testing.assert_close(a, b)


def test_trained_truncation_takes_the_same_decoder_adapter(qa_file, tmp_path):
    """Comparisons stay at equal capacity: the prompt-tuned truncation trains one too."""
    cfg = config("prompt_tuned", qa_file, tmp_path / "t", steps=1, save_every=1000, warmup_steps=0)
    cfg.method_options.update(context="truncation", lora_rank=4, decoder_lora_rank=4)
    trainer = Trainer(cfg, base_model=tiny_model())
    weights = decoder_weights(trainer.compressor)
    before = {n: p.detach().clone() for n, p in weights.items()}
    trainer.run()
    assert trainer.compressor.has_decoder_adapter
    assert any(not torch.equal(p, before[n]) for n, p in weights.items() if "lora_B" in n)


@pytest.mark.parametrize(
    "method,options,match",
    [
        ("sac", {"lora_rank": 0, "decoder_lora_rank": 4}, "needs the encoder adapter"),
        ("sac", {"decoder_lora_rank": -1}, "decoder_lora_rank must be an integer >= 0"),
        ("truncation", {"decoder_lora_rank": 4}, "hard baselines have no adapter"),
        ("full_context", {"decoder_lora_rank": 4}, "hard baselines have no adapter"),
        ("prompt_tuned", {"decoder_lora_rank": 4}, "needs the encoder adapter"),
    ],
)
def test_a_decoder_adapter_that_cannot_be_is_refused_before_any_step(method, options, match):
    with pytest.raises(InvalidInputError, match=match):
        cc.build_compressor(method, tiny_model(), **options)


# --------------------------------------------------------------------------- lever 1


def test_surprisal_is_the_models_own_next_token_loss():
    lm = tiny_model().model
    row = list(range(5, 40))
    (scores,) = surprisal(lm, [row], position_start=1)
    with torch.no_grad():
        ids = torch.tensor([row])
        logits = lm(input_ids=ids, position_ids=torch.arange(len(row))[None] + 1).logits[0]
    expected = -torch.log_softmax(logits.float(), -1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
    assert scores[0] == float("inf")
    torch.testing.assert_close(scores[1:], expected, atol=1e-5, rtol=1e-5)


def test_reconstruction_importance_is_the_largest_attention_of_the_repeat():
    """Brute force with output_attentions: max over layers, heads and the second copy's
    queries of the weight on each first-copy token; the model is left as it was."""
    base = tiny_model(attn_implementation="sdpa")
    lm = base.model
    row, prompt = list(range(5, 25)), [3, 4]
    (scores,) = reconstruction_importance(lm, [row], prompt, position_start=0, window=510)
    assert lm.config._attn_implementation == "sdpa"
    assert not any(m._forward_hooks for m in lm.modules())
    check = tiny_model(attn_implementation="eager").model
    ids = torch.tensor([row + prompt + row])
    with torch.no_grad():
        out = check(input_ids=ids, output_attentions=True)
    n, p = len(row), len(prompt)
    expected = torch.stack([a[0, :, n + p :, :n].amax(dim=(0, 1)) for a in out.attentions])
    torch.testing.assert_close(scores, expected.amax(0), atol=1e-5, rtol=1e-4)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_top_scoring_offsets_are_increasing_the_budget_and_break_ties_by_position():
    scores = torch.tensor([0.0, 5.0, 1.0, 5.0, 5.0, 2.0])
    assert top_scoring_offsets(scores, 2) == [1, 3]
    assert top_scoring_offsets(scores, 3, first=2) == [3, 4, 5]
    assert top_scoring_offsets(scores, 10) == list(range(6))


@pytest.mark.parametrize("selection", ["head", "surprisal", "importance", "learned"])
@pytest.mark.parametrize("ratio,sink", [(1, 0), (2, 0), (3, 2), (5, 1)])
def test_chosen_anchors_keep_the_budget_in_order_at_their_positions(selection, ratio, sink):
    comp = make_sac(
        tiny_model(),
        ratio=ratio,
        chunk_size=24,
        anchor_selection=selection,
        anchor_embedding="shared",
        sink_tokens=sink,
    )
    uniform = make_sac(
        tiny_model(), ratio=ratio, chunk_size=24, anchor_embedding="shared", sink_tokens=sink
    )
    ids = comp.context_ids(TEXT)
    ctx, reference = comp.compress_ids([ids])[0], uniform.compress_ids([ids])[0]
    # The count is the budget; positions strictly increase and stay inside the text.
    assert ctx.keys.shape == reference.keys.shape
    assert ctx.keys.shape[2] == comp.compressed_length(len(ids))
    positions = ctx.positions.tolist()
    assert positions == sorted(set(positions))
    start = comp.config.position_start
    assert positions[0] >= start and positions[-1] < start + len(ids)
    # The sink tokens are kept as themselves, first.
    assert positions[:sink] == reference.positions.tolist()[:sink]
    # Per chunk, exactly as many anchors as the uniform stride keeps.
    for s, e in chunk_spans(len(ids), 24):
        inside = [q for q in positions if s + start <= q < e + start]
        assert len(inside) == len(sac_anchor_offsets(e - s, ratio))
    if ratio == 1:  # ratio 1 keeps every token
        assert positions == list(range(start, start + len(ids)))


def test_scored_anchors_follow_the_scores():
    """The anchors are the highest-scoring tokens of each chunk."""
    comp = make_sac(tiny_model(), ratio=4, chunk_size=510, anchor_selection="surprisal")
    ids = comp.context_ids(TEXT)
    (scores,) = comp.token_scores([ids])
    ctx = comp.compress_ids([ids])[0]
    chosen = [q - comp.config.position_start for q in ctx.positions.tolist()]
    threshold = min(scores[chosen])
    assert all(scores[i] <= threshold for i in range(len(ids)) if i not in chosen)


@pytest.mark.parametrize("sink", [0, 3])
def test_head_anchors_read_causally_are_head_truncation(sink):
    """anchor_selection="head" keeps each chunk's first tokens: with a causal encoder, no
    anchor embedding and the adapter at its zero start, the compressed context is exactly
    the entries head truncation keeps — the frozen model's own KV of the context's first
    ``budget`` tokens at their positions (so training starts from trained truncation)."""
    options = {"ratio": 4, "sink_tokens": sink, "anchor_embedding": "none"}
    comp = make_sac(tiny_model(), anchor_selection="head", encoder_attention="causal", **options)
    ids = comp.context_ids(TEXT)
    (ctx,) = comp.compress_ids([ids])
    budget = comp.compressed_length(len(ids))
    start = comp.config.position_start
    assert ctx.positions.tolist() == list(range(start, start + budget))
    with torch.no_grad():
        out = comp.lm(
            input_ids=torch.tensor([ids]),
            position_ids=torch.arange(start, start + len(ids))[None],
            use_cache=True,
        )
    for layer, entries in enumerate(out.past_key_values.layers):
        keys, values = entries.keys, entries.values
        torch.testing.assert_close(ctx.keys[layer], keys[0, :, :budget], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ctx.values[layer], values[0, :, :budget], atol=1e-5, rtol=1e-4)


def test_head_anchors_read_bidirectionally_carry_what_follows_them():
    """With the default bidirectional encoder a head anchor's entries depend on the tokens
    after it (the rest of its chunk): what lets them hold more than truncation does."""
    comp = make_sac(tiny_model(), ratio=4, anchor_selection="head", anchor_embedding="none")
    ids = comp.context_ids(TEXT)
    changed = list(ids)
    changed[-2] = (changed[-2] + 1) % comp.lm.config.vocab_size
    (a,), (b,) = comp.compress_ids([ids]), comp.compress_ids([changed])
    assert a.positions.tolist() == b.positions.tolist()
    assert not torch.allclose(a.keys[-1], b.keys[-1])


def test_the_learned_scorer_chooses_by_its_own_scores_outside_training():
    """Outside training the anchors are the top tokens of a linear head on the frozen
    model's last hidden states; the head is saved and loaded with the compressor."""
    comp = make_sac(tiny_model(), ratio=3, anchor_selection="learned", anchor_embedding="shared")
    randomize_trainables(comp)  # a trained encoder adapter must not change what it reads
    ids = comp.context_ids(TEXT)
    with comp.frozen_mode():
        (hidden,) = frozen_hidden(comp.lm, [ids], comp.config.position_start)
    with torch.no_grad():
        expected = comp.anchor_scorer(hidden).squeeze(-1)
    (scores,) = comp.token_scores([ids])
    torch.testing.assert_close(scores, expected)
    ctx = comp.compress_ids([ids])[0]
    chosen = [q - comp.config.position_start for q in ctx.positions.tolist()]
    assert all(scores[i] <= min(scores[chosen]) for i in range(len(ids)) if i not in chosen)
    assert {"anchor_scorer.weight", "anchor_scorer.bias"} <= set(comp.learned_embeddings())


def test_the_learned_scorer_learns_to_imitate_its_signal(qa_file, tmp_path):
    """Training adds the imitation loss and moves the scorer towards the signal: its
    imitation loss on the training contexts falls."""
    cfg = config("sac", qa_file, tmp_path / "s", steps=30, save_every=1000, warmup_steps=0)
    cfg.method_options.update(
        anchor_selection="learned", anchor_scorer_target="surprisal", anchor_embedding="shared"
    )
    trainer = Trainer(cfg, base_model=tiny_model())
    comp = trainer.compressor
    contexts = [e.context_ids for s in trainer.sources for e in s.examples]

    def imitation():
        with torch.no_grad(), comp.frozen_mode():  # what the scorer reads: the frozen model
            features = frozen_hidden(comp.lm, contexts, comp.config.position_start)
            predicted = [comp.anchor_scorer(f).squeeze(-1) for f in features]
            return float(imitation_loss(predicted, surprisal(comp.lm, contexts, 1)))

    before = imitation()
    trainer.run()
    assert imitation() < 0.7 * before
    assert comp.pop_auxiliary_loss() is None  # consumed by every training forward


def test_imitation_loss_is_zero_for_a_perfect_imitation_and_ignores_scale():
    target = torch.tensor([float("inf"), 1.0, 3.0, 2.0, 5.0])
    z = (target[1:] - target[1:].mean()) / target[1:].std()
    perfect = torch.cat([torch.tensor([123.0]), z])
    assert float(imitation_loss([perfect], [target])) == pytest.approx(0.0, abs=1e-6)
    assert float(imitation_loss([perfect], [target * 10])) == pytest.approx(0.0, abs=1e-6)
    assert float(imitation_loss([-perfect], [target])) > 1


def test_scored_anchors_cannot_grow_a_context():
    comp = make_sac(tiny_model(), ratio=2, anchor_selection="importance")
    ctx = comp.compress(TEXT)
    with pytest.raises(InvalidInputError, match="anchor_selection='uniform'"):
        comp.extend(ctx, " More text about the attic.")


def test_an_unknown_selector_is_refused_naming_the_choices():
    with pytest.raises(InvalidInputError, match="head, surprisal, importance, learned"):
        make_sac(tiny_model(), anchor_selection="kvzap")
    with pytest.raises(InvalidInputError, match="anchor_scorer_target"):
        make_sac(tiny_model(), anchor_selection="learned", anchor_scorer_target="random")
    with pytest.raises(InvalidInputError, match="anchor_scorer_weight"):
        make_sac(tiny_model(), anchor_selection="learned", anchor_scorer_weight=-1)


# --------------------------------------------------------------------------- lever 2


def ramp_config(qa_file, tmp_path, steps=8, **loop):
    loop = {"save_every": 1000, **loop}
    cfg = config("sac", qa_file, tmp_path / "ramp", steps=steps, **loop)
    cfg.method_options.update(ratio=4, anchor_embedding="shared")
    return cfg


def test_the_ramp_rises_from_its_start_to_the_plain_ratio(qa_file, tmp_path):
    cfg = ramp_config(qa_file, tmp_path, ratio_ramp_steps=6)
    ratios = [cfg.ramp_ratio(step, 4) for step in range(8)]
    assert ratios[0] == 1 and ratios[5] == 4 and ratios[6:] == [None, None]
    seen = [r for r in ratios if r is not None]
    assert seen == sorted(seen) and max(seen) <= 4 and min(seen) >= 1


def test_training_follows_the_ramp_then_trains_at_the_plain_ratio(qa_file, tmp_path):
    cfg = ramp_config(qa_file, tmp_path, ratio_ramp_steps=4, micro_batch_size=2)
    seen = []
    trainer = Trainer(
        cfg, base_model=tiny_model(), on_step=lambda s, m: seen.append(m.get("ratios"))
    )
    trainer.run()
    # A batch of 4 in micro-batches of 2: both micro-batches of a step at the ramp's ratio.
    assert seen[:4] == [[r, r] for r in (1, 2, 3, 3)]  # round(1 + 3 * step / 4)
    assert all(r is None for r in seen[4:])  # the ramp's end is the plain ratio


@pytest.mark.parametrize(
    "loop,options,match",
    [
        ({"ratio_ramp_steps": 4, "ratio_ramp_start": 0}, {}, "starts at ratio 1"),
        ({"ratio_ramp_steps": 4, "ratio_ramp_start": 5}, {}, "beyond the target ratio"),
        ({"ratio_ramp_steps": 20}, {}, "ends beyond train.steps"),
        ({"ratio_ramp_steps": 4, "ratios": [4, 8]}, {}, "use one"),
        ({"ratio_ramp_steps": 4}, {"anchor_embedding": "per_slot"}, "anchor_embedding: shared"),
    ],
)
def test_a_ramp_that_cannot_be_is_refused_before_any_step(qa_file, tmp_path, loop, options, match):
    cfg_dict = ramp_config(qa_file, tmp_path).to_dict()
    cfg_dict["train"].update(loop)
    cfg_dict["method_options"].update(options)
    from ctxcompress.training import parse_config

    with pytest.raises(InvalidInputError, match=match):
        Trainer(parse_config(cfg_dict), base_model=tiny_model())


def test_a_memory_token_method_cannot_ramp(qa_file, tmp_path):
    cfg = config("pic", qa_file, tmp_path / "p", steps=8, save_every=1000, ratio_ramp_steps=4)
    cfg.method_options["ratio"] = 4
    with pytest.raises(InvalidInputError, match="learned vectors per slot"):
        Trainer(cfg, base_model=tiny_model())


def test_ramped_training_is_resumed_exactly(qa_file, tmp_path):
    """The ramp depends on the step alone: a run stopped inside it resumes on the same path."""
    one = Trainer(ramp_config(qa_file, tmp_path / "a", ratio_ramp_steps=6), base_model=tiny_model())
    one.run()
    cfg = ramp_config(qa_file, tmp_path / "b", ratio_ramp_steps=6, save_every=3)
    first = Trainer(cfg, base_model=tiny_model())
    first.run(until_step=3)
    second = Trainer(cfg, base_model=tiny_model())
    assert second.step == 3
    second.run()
    for name, p in one.compressor.trainable_parameters().items():
        torch.testing.assert_close(p, second.compressor.trainable_parameters()[name])
