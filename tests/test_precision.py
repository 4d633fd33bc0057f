"""bfloat16 training steps with the frozen base weights in bfloat16 (issue 38, lever 5):
what is swapped and what is not, that the model outside a step is the float32 model bit for
bit, parity of the loss with float32, and the clear edges (``no`` in YAML, a CPU that would
emulate bfloat16)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ctxcompress.training.precision as precision
from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.testing import tiny_model
from ctxcompress.training import Trainer, load_config
from ctxcompress.training.precision import FrozenWeightsInLowPrecision
from tests.conftest import make_sac
from tests.test_training import config

# bfloat16 keeps 8 bits of mantissa: one rounding is 2^-9 ~ 0.2 % relative; a tiny model's
# loss after a few layers of such matmuls stays within 2 %.
LOSS_RTOL = 0.02


def frozen_linear_weights(comp):
    trainable = {id(p) for p in comp.trainable_parameters().values()}
    embeddings = {id(m.weight) for m in comp.modules() if isinstance(m, nn.Embedding)}
    return [
        m.weight
        for m in comp.modules()
        if isinstance(m, nn.Linear)
        and id(m.weight) not in trainable
        and id(m.weight) not in embeddings
    ]


def test_only_frozen_linear_weights_are_swapped_and_restored_bit_for_bit():
    comp = make_sac(tiny_model(), ratio=2, lora_rank=4, lora_alpha=8)
    frozen = frozen_linear_weights(comp)
    assert frozen, "the tiny model has frozen linear layers"
    before = {n: p.detach().clone() for n, p in comp.named_parameters()}
    storages = {n: p.data_ptr() for n, p in comp.named_parameters()}
    swaps = FrozenWeightsInLowPrecision([comp], comp.trainable_parameters().values())
    assert swaps.weights == len(frozen)
    assert swaps.extra_bytes == sum(w.numel() * 2 for w in frozen)
    with swaps.active():
        assert all(w.dtype == torch.bfloat16 for w in frozen)
        assert all(p.dtype == torch.float32 for p in comp.trainable_parameters().values())
        assert comp.lm.get_input_embeddings().weight.dtype == torch.float32
        with swaps.active():  # re-entrant
            pass
        assert all(w.dtype == torch.bfloat16 for w in frozen)
    for name, p in comp.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.data_ptr() == storages[name], name  # the very same tensors, not copies
        assert torch.equal(p, before[name]), name


def test_swapping_is_undone_when_the_step_raises():
    comp = make_sac(tiny_model(), ratio=2, lora_rank=4, lora_alpha=8)
    swaps = FrozenWeightsInLowPrecision([comp], comp.trainable_parameters().values())
    with pytest.raises(RuntimeError, match="boom"), swaps.active():
        raise RuntimeError("boom")
    assert all(w.dtype == torch.float32 for w in frozen_linear_weights(comp))


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_a_bf16_step_matches_the_float32_step_and_keeps_training_state_in_float32(
    method, qa_file, tmp_path
):
    """Same batch, same initial weights: the loss agrees within bfloat16 rounding; the
    trained tensors and the optimizer state stay float32, the base weights are untouched."""
    losses = {}
    for mp in ("no", "bf16"):
        cfg = config(method, qa_file, tmp_path / mp, steps=1, mixed_precision=mp)
        trainer = Trainer(cfg, base_model=tiny_model(initializer_range=0.2))
        base = {n: p.detach().clone() for n, p in trainer.compressor.lm.named_parameters()}
        losses[mp] = trainer.train_step()["loss"]
        comp = trainer.compressor
        assert (trainer.low_precision is not None) == (mp == "bf16")
        assert all(p.dtype == torch.float32 for p in comp.trainable_parameters().values())
        for state in trainer.optimizer.state.values():
            assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
        trainable = set(comp.trainable_parameters())
        for name, p in comp.lm.named_parameters():
            if f"lm.{name}" not in trainable and "lora_" not in name:
                assert p.dtype == torch.float32 and torch.equal(p, base[name]), name
    assert losses["bf16"] == pytest.approx(losses["no"], rel=LOSS_RTOL)


def test_autocast_alone_is_still_available(qa_file, tmp_path):
    cfg = config(
        "sac", qa_file, tmp_path / "a", steps=1, mixed_precision="bf16", bf16_frozen_weights=False
    )
    trainer = Trainer(cfg, base_model=tiny_model())
    assert trainer.low_precision is None and trainer.accelerator.mixed_precision == "bf16"


def test_one_process_may_train_in_float32_after_bf16(qa_file, tmp_path):
    """accelerate keeps one precision per process; the trainer resets it between runs."""
    Trainer(config("sac", qa_file, tmp_path / "a", steps=1, mixed_precision="bf16"))
    fp32 = Trainer(config("sac", qa_file, tmp_path / "b", steps=1, mixed_precision="no"))
    assert fp32.accelerator.mixed_precision == "no" and fp32.low_precision is None


def test_yaml_no_is_the_string_no(qa_file, tmp_path):
    """YAML 1.1 reads a bare ``no`` as false: ``--set train.mixed_precision=no`` must work."""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"method: sac\nbase_model: tiny\ndata: [{{source: 'jsonl:{qa_file}'}}]\n"
        "train: {mixed_precision: no}\n"
    )
    assert load_config(path).train.mixed_precision == "no"
    assert load_config(path, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(path, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_bf16_on_a_cpu_that_emulates_it_warns_that_it_is_slower(qa_file, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    cfg = config("sac", qa_file, tmp_path / "w", steps=1, mixed_precision="bf16")
    with pytest.warns(RuntimeWarning, match="SLOWER than in float32"):
        Trainer(cfg, base_model=tiny_model())
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Trainer(
            config("sac", qa_file, tmp_path / "q", steps=1, mixed_precision="bf16"),
            base_model=tiny_model(),
        )
