"""Distillation and the learned-vector learning rate in the trainer (METHODS.md §7)."""

from __future__ import annotations

import json

import pytest
import torch

import ctxcompress as cc
from ctxcompress.testing import tiny_model
from ctxcompress.training import Trainer, parse_config, qa_example
from ctxcompress.training.distillation import FrozenFullContextTeacher
from tests.test_training import config, params


def distill_config(qa_file, out, method="sac", **distill):
    cfg = config(method, qa_file, out, steps=2, save_every=100)
    data = {**cfg.to_dict(), "distill": {"weight": 1.0, **distill}}
    return parse_config(data)


def test_frozen_full_context_teacher_is_the_plain_model_on_the_whole_prompt():
    comp = cc.build_compressor("sac", tiny_model(), ratio=2, lora_rank=4)
    ex = qa_example(comp, "The code is alpha.", "What is the code?", "alpha")
    logits = FrozenFullContextTeacher(comp).logits([ex, ex])
    row = [*ex.context_ids, *ex.prompt_ids, *ex.target_ids[:-1]]
    with torch.no_grad(), comp.decoder_mode():
        full = comp.lm(torch.tensor([row])).logits[0].float()
    start = len(ex.context_ids) + len(ex.prompt_ids) - 1
    expected = full[start : start + len(ex.target_ids)]
    torch.testing.assert_close(logits[: len(ex.target_ids)], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[len(ex.target_ids) :], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["sac", "pic"])
def test_distillation_trains_and_logs_both_terms(method, qa_file, tmp_path):
    trainer = Trainer(distill_config(qa_file, tmp_path / "d", method))
    trainer.run()
    line = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["kl"] > 0 and line["ce"] > 0
    assert line["loss"] == pytest.approx(line["ce"] + line["kl"], rel=1e-4)


def test_distillation_weight_zero_trains_exactly_as_without(qa_file, tmp_path):
    plain = Trainer(config("sac", qa_file, tmp_path / "a", steps=2))
    plain.run()
    zero = Trainer(distill_config(qa_file, tmp_path / "b", weight=0.0))
    assert zero.teacher is None
    zero.run()
    a, b = params(plain.compressor), params(zero.compressor)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_saved_compressor_can_be_the_teacher(qa_file, tmp_path):
    full = config("prompt_tuned", qa_file, tmp_path / "full", steps=1)
    full.method_options.update({"context": "full", "prompt_vectors": 0})
    Trainer(full).run()
    cfg = distill_config(qa_file, tmp_path / "s", teacher=str(tmp_path / "full" / "compressor"))
    trainer = Trainer(cfg)
    trainer.run()
    line = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["kl"] > 0


def test_bad_teachers_fail_before_any_step(qa_file, tmp_path):
    with pytest.raises(cc.InvalidInputError, match="is neither 'full_context'"):
        distill_config(qa_file, tmp_path / "x", teacher="gpt-5")
    with pytest.raises(cc.InvalidInputError, match="distill.temperature must be > 0"):
        distill_config(qa_file, tmp_path / "x", temperature=0)
    with pytest.raises(cc.InvalidInputError, match="unknown key"):
        distill_config(qa_file, tmp_path / "x", wieght=1)
    # A teacher trained on another base model.
    other = cc.build_compressor(
        "prompt_tuned", tiny_model(seed=3), context="full", prompt_vectors=0
    )
    other.save_pretrained(tmp_path / "other")
    cfg = distill_config(qa_file, tmp_path / "x", teacher=str(tmp_path / "other"))
    with pytest.raises(cc.InvalidInputError, match="must share the student's base model"):
        Trainer(cfg)
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_a_teacher_with_another_tokenizer_is_refused(qa_file, tmp_path, monkeypatch):
    import ctxcompress.training.distillation as distillation

    teacher = cc.build_compressor("prompt_tuned", tiny_model(), context="full", prompt_vectors=0)
    teacher.save_pretrained(tmp_path / "t")
    loaded = cc.load_compressor(tmp_path / "t")
    loaded.tokenizer = cc.testing.tiny_tokenizer(vocab_size=300)
    monkeypatch.setattr(distillation, "load_compressor", lambda *a, **k: loaded)
    with pytest.raises(cc.InvalidInputError, match="another tokenizer"):
        Trainer(distill_config(qa_file, tmp_path / "x", teacher=str(tmp_path / "t")))


def test_embedding_lr_scale_gives_the_learned_vectors_their_own_rate(qa_file, tmp_path):
    cfg = config("sac", qa_file, tmp_path / "e", steps=1, embedding_lr_scale=10.0, lr=1e-3)
    trainer = Trainer(cfg)
    groups = trainer.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [1e-3, 1e-2]
    vectors = {id(p) for p in trainer.compressor.learned_embeddings().values()}
    assert {id(p) for p in groups[1]["params"]} == vectors
    assert not vectors & {id(p) for p in groups[0]["params"]}
    trainer.run()
    with pytest.raises(cc.InvalidInputError, match="embedding_lr_scale must be > 0"):
        config("sac", qa_file, tmp_path / "f", embedding_lr_scale=0)


def test_sparse_kl_over_the_whole_vocabulary_is_the_full_kl():
    from ctxcompress.methods.loss import distillation_kl

    student, teacher = torch.randn(3, 17), torch.randn(3, 17)
    full = distillation_kl(student, teacher, 2.0)
    values, indices = teacher.topk(17, dim=-1)
    torch.testing.assert_close(distillation_kl(student, values, 2.0, indices), full)
    top3, ids3 = teacher.topk(3, dim=-1)
    assert float(distillation_kl(student, top3, 1.0, ids3)) > 0
    # Zero only when the student puts the teacher's renormalised top-k mass there, and
    # nothing elsewhere.
    exact = torch.full((3, 17), -1e4).scatter(-1, ids3, top3)
    assert float(distillation_kl(exact, top3, 1.0, ids3)) == pytest.approx(0.0, abs=1e-5)


def test_cached_top_k_teacher_runs_once_per_example(qa_file, tmp_path, monkeypatch):
    import ctxcompress.training.distillation as distillation

    cache = tmp_path / "cache"
    first = Trainer(distill_config(qa_file, tmp_path / "a", top_k=8, cache_dir=str(cache)))
    first.run()
    entries = list(cache.rglob("*.safetensors"))
    assert len(entries) == 4  # the 4 distinct examples of the file
    line = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["kl"] > 0

    def no_teacher(self, examples):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(distillation.FrozenFullContextTeacher, "logits", no_teacher)
    second = Trainer(distill_config(qa_file, tmp_path / "b", top_k=8, cache_dir=str(cache)))
    second.run()
    a, b = params(first.compressor), params(second.compressor)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_top_k_and_cache_options_are_checked(qa_file, tmp_path):
    with pytest.raises(cc.InvalidInputError, match="set distill.top_k too"):
        distill_config(qa_file, tmp_path / "x", cache_dir=str(tmp_path / "c"))
    with pytest.raises(cc.InvalidInputError, match="distill.top_k must be >= 0"):
        distill_config(qa_file, tmp_path / "x", top_k=-2)
    with pytest.raises(cc.InvalidInputError, match="exceeds the vocabulary"):
        Trainer(distill_config(qa_file, tmp_path / "x", top_k=10**6))


# ------------------------------------------------------------- hidden-state distillation


def test_hidden_distance_is_zero_only_on_agreement_and_relative_to_the_teacher():
    from ctxcompress.methods.loss import hidden_distance

    teacher = torch.randn(3, 5, 8)  # [layers, inputs, hidden]
    assert float(hidden_distance(teacher.clone(), teacher)) == 0.0
    # A student of zeros sits at 1 per input whatever the teacher's scale.
    assert float(hidden_distance(torch.zeros_like(teacher), teacher)) == pytest.approx(5.0)
    assert float(hidden_distance(torch.zeros_like(teacher), 100 * teacher)) == pytest.approx(5.0)
    noisy = teacher + 0.1 * torch.randn(teacher.shape)
    assert 0 < float(hidden_distance(noisy, teacher)) < 5.0


def test_target_states_are_every_layer_at_the_inputs_after_the_opener():
    comp = cc.build_compressor("sac", tiny_model(), ratio=2, lora_rank=4)
    a = qa_example(comp, "The code is alpha.", "What is the code?", "alpha")
    b = qa_example(comp, "Bravo is the word.", "Which word?", "bravo it is")
    batch = [[e.context_ids for e in (a, b)], [e.prompt_ids for e in (a, b)]]
    with torch.no_grad():
        out = comp.target_logits(*batch, [a.target_ids, b.target_ids], with_states=True)
    sizes = [len(e.prompt_ids) + len(e.target_ids) - 1 for e in (a, b)]
    layers = comp.lm.config.num_hidden_layers
    assert out.states.shape == (layers, sum(sizes), comp.lm.config.hidden_size)
    assert out.state_rows.tolist() == [0] * sizes[0] + [1] * sizes[1]
    # The last layer's state at the input before each target token gives its logits.
    for row, e in enumerate((a, b)):
        first = sum(sizes[:row]) + len(e.prompt_ids) - 1
        states = out.states[-1, first : first + len(e.target_ids)]
        logits = comp.lm.get_output_embeddings()(states).float()
        torch.testing.assert_close(logits, out.logits[out.rows == row], atol=1e-5, rtol=1e-5)


def test_frozen_teacher_states_are_the_plain_model_after_the_context():
    comp = cc.build_compressor("sac", tiny_model(), ratio=2, lora_rank=4)
    ex = qa_example(comp, "The code is alpha.", "What is the code?", "alpha")
    logits, states = FrozenFullContextTeacher(comp).outputs([ex, ex], with_states=True)
    assert torch.equal(logits, FrozenFullContextTeacher(comp).logits([ex, ex]))
    row = [*ex.context_ids, *ex.prompt_ids, *ex.target_ids[:-1]]
    with torch.no_grad(), comp.decoder_mode():
        full = comp.lm(torch.tensor([row]), output_hidden_states=True).hidden_states
    expected = torch.stack(full[1:])[:, 0, len(ex.context_ids) :]
    n = len(row) - len(ex.context_ids)
    assert states.shape[1] == 2 * n
    torch.testing.assert_close(states[:, :n], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[:, n:], expected, atol=1e-5, rtol=1e-5)


def test_hidden_term_is_zero_against_itself_and_enters_with_its_weight():
    comp = cc.build_compressor("sac", tiny_model(), ratio=2, lora_rank=4)
    ex = qa_example(comp, "The code is alpha.", "What is the code?", "alpha")
    args = ([ex.context_ids], [ex.prompt_ids], [ex.target_ids])
    plain, _ = comp(*args)
    with torch.no_grad():
        own = comp.target_logits(*args, with_states=True).states
    same, _ = comp(*args, teacher_states=own, teacher_rows=[0], hidden_weight=2.0)
    assert comp.last_loss_terms["hidden"] == pytest.approx(0.0, abs=1e-6)
    assert float(same.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    other = own + torch.randn(own.shape, generator=torch.Generator().manual_seed(0))
    loss, _ = comp(*args, teacher_states=other, teacher_rows=[0], hidden_weight=0.5)
    hidden = comp.last_loss_terms["hidden"]
    assert hidden > 0
    assert float(loss.detach()) == pytest.approx(float(plain.detach()) + 0.5 * hidden, rel=1e-5)
    with pytest.raises(cc.InvalidInputError, match="teacher states"):
        comp(*args, teacher_states=other[:, 1:], teacher_rows=[0], hidden_weight=1.0)


@pytest.mark.parametrize("method", ["sac", "icae"])
def test_hidden_distillation_trains_and_logs_its_term(method, qa_file, tmp_path):
    trainer = Trainer(distill_config(qa_file, tmp_path / "h", method, weight=0, hidden_weight=1))
    assert trainer.teacher is not None  # the hidden term alone needs the teacher
    before = params(trainer.compressor)
    trainer.run()
    line = json.loads((tmp_path / "h" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["hidden"] > 0 and line["kl"] > 0  # the KL is logged, at weight 0
    assert line["loss"] == pytest.approx(line["ce"] + line["hidden"], rel=1e-4)
    after = params(trainer.compressor)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_hidden_distillation_options_are_checked(qa_file, tmp_path):
    with pytest.raises(cc.InvalidInputError, match="hidden_weight must be >= 0"):
        distill_config(qa_file, tmp_path / "x", hidden_weight=-1)
    with pytest.raises(cc.InvalidInputError, match="drop cache_dir"):
        distill_config(qa_file, tmp_path / "x", hidden_weight=1, top_k=8, cache_dir="c")
    with pytest.raises(cc.InvalidInputError, match="distill.hidden_weight"):
        distill_config(qa_file, tmp_path / "x", hidden_weight="lots")
