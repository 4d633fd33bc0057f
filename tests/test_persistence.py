"""save_pretrained / load_compressor round trips, from memory and from a local model folder."""

from __future__ import annotations

import json

import pytest
import torch

import ctxcompress as cc
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, make_sac, randomize_trainables


def _trainables(comp):
    return {n: p.detach().clone() for n, p in comp.trainable_parameters().items()}


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": 4},
        {"ratio": 3, "anchor_embedding": "shared", "encoder_attention": "causal"},
        {"ratio": 2, "lora_rank": 0, "anchor_selection": "random"},
    ],
)
def test_compressor_round_trips_bit_exactly(tmp_path, options):
    comp = make_sac(tiny_model(), **options)
    randomize_trainables(comp, seed=7)
    comp.save_pretrained(tmp_path / "comp")
    back = cc.load_compressor(tmp_path / "comp", base_model=tiny_model())
    assert type(back) is type(comp) and back.config == comp.config
    before, after = _trainables(comp), _trainables(back)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert back.fingerprint == comp.fingerprint
    a, b = comp.compress(TEXT * 6), back.compress(TEXT * 6)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # A context made by the original is accepted by the reloaded compressor.
    assert back.generate(a, "Who?", max_new_tokens=5) == comp.generate(a, "Who?", max_new_tokens=5)


def test_saved_folder_layout_is_peft_compatible(tmp_path):
    comp = make_sac(tiny_model(), ratio=4)
    out = comp.save_pretrained(tmp_path / "c")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "ctxcompress.json",
        "embeddings.safetensors",
        "README.md",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    } <= names
    header = json.loads((out / "ctxcompress.json").read_text())
    assert header["method"] == "sac" and header["config"]["ratio"] == 4
    assert header["base_model"]["fingerprint"] == comp.base_fingerprint
    # Overwriting keeps exactly one folder and no temporaries.
    comp.save_pretrained(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_load_from_recorded_local_base_model(tmp_path):
    base = tiny_model("qwen2")
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    comp = cc.build_compressor("sac", str(tmp_path / "base"), ratio=5, lora_rank=4)
    randomize_trainables(comp)
    comp.save_pretrained(tmp_path / "comp")
    back = cc.load_compressor(tmp_path / "comp")  # base model reloaded from its recorded folder
    assert back.base_source == str((tmp_path / "base").resolve())
    ctx = comp.compress(TEXT * 3)
    assert back.generate(ctx, "Who?", max_new_tokens=4) == comp.generate(
        ctx, "Who?", max_new_tokens=4
    )


def test_wrong_base_model_is_refused(tmp_path):
    make_sac(tiny_model(), ratio=4).save_pretrained(tmp_path / "c")
    with pytest.raises(cc.ModelLoadError, match="trained on base model"):
        cc.load_compressor(tmp_path / "c", base_model=tiny_model(seed=5))


def test_not_a_compressor_folder(tmp_path):
    with pytest.raises(cc.ModelLoadError, match="not a saved compressor"):
        cc.load_compressor(tmp_path)
    (tmp_path / "ctxcompress.json").write_text("{broken")
    with pytest.raises(cc.CorruptFileError, match="corrupt"):
        cc.load_compressor(tmp_path)


def test_corrupt_weights_are_reported(tmp_path):
    out = make_sac(tiny_model(), ratio=4).save_pretrained(tmp_path / "c")
    (out / "embeddings.safetensors").write_bytes(b"garbage")
    with pytest.raises(cc.CorruptFileError, match="embeddings.safetensors"):
        cc.load_compressor(out, base_model=tiny_model())


def test_a_second_adapter_on_one_model_object_is_refused():
    base = tiny_model()
    make_sac(base, ratio=4)
    with pytest.raises(cc.ModelLoadError, match="already carries"):
        make_sac(base, ratio=2)


def test_rebuilding_gives_the_same_compressor():
    """LoRA init is seeded by config.seed (not torch's global RNG): a rebuild is identical,
    so contexts made by an untrained compressor are accepted by its rebuild."""
    torch.manual_seed(1)
    a = make_sac(tiny_model(), ratio=4)
    torch.manual_seed(2)
    b = make_sac(tiny_model(), ratio=4)
    assert a.fingerprint == b.fingerprint
    c = make_sac(tiny_model(), ratio=4, seed=1)
    assert c.fingerprint != a.fingerprint


def test_tiny_source_reloads_and_fingerprint_ignores_dtype(tmp_path):
    comp = make_sac(tiny_model(), ratio=4)
    comp.save_pretrained(tmp_path / "c")
    back = cc.load_compressor(tmp_path / "c")  # source "tiny-llama" rebuilds the test model
    assert back.fingerprint == comp.fingerprint
    bf16 = cc.load_base_model("tiny", dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    assert bf16.fingerprint == tiny_model().fingerprint


def test_the_fingerprint_does_not_depend_on_the_adapter_switch():
    """Regression (issue 18): peft's adapter switch toggles the LoRA weights'
    ``requires_grad``, and the fingerprint counted only ``requires_grad`` tensors, so a
    fingerprint read while the decoder ran (the service's request threads) differed."""
    from ctxcompress.testing import tiny_model

    comp = cc.build_compressor("sac", tiny_model(), ratio=4, lora_rank=2)
    before = comp.fingerprint
    names = set(comp.trainable_parameters())
    assert any("lora_" in n for n in names)
    with comp.decoder_mode():
        comp._fingerprint_cache = None  # recompute inside the switch, as another thread would
        assert set(comp.trainable_parameters()) == names
        assert comp.fingerprint == before
