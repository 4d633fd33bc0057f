"""Composition (issue 20 part 3): separately compressed contexts read as one.

Invariants: a RoPE key moved by ``s`` positions is the key the model computes at ``p + s``;
for SAC, composing the contexts of a chunk-aligned ``x`` and any ``y`` equals compressing
``x + y`` (keys, values, positions, answers), on every supported architecture; bad
compositions are clear errors."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.errors import ContextMismatchError, ContextTooLongError, InvalidInputError
from ctxcompress.methods.encoding import prefill_kv
from ctxcompress.rope import shift_keys, shift_problem
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, randomize_trainables

ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3"]
CHUNK = 16
QUESTIONS = ["Who wrote the report?", "Where did they meet?"]


def sac(arch="llama", **options):
    comp = cc.build_compressor(
        "sac", tiny_model(arch), ratio=4, chunk_size=CHUNK, lora_rank=4, **options
    )
    randomize_trainables(comp)
    return comp


def token_ids(comp, n, seed=0):
    ids = comp.tokenizer(TEXT * 4, add_special_tokens=False).input_ids
    gen = torch.Generator().manual_seed(seed)
    start = int(torch.randint(0, len(ids) - n, (1,), generator=gen))
    return ids[start : start + n]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shift", [1, 37, -5, 1500])
def test_a_shifted_key_is_the_key_computed_at_the_shifted_position(arch, shift):
    lm = tiny_model(arch).model
    row = list(range(5, 25))
    start = 10
    ((here, _),) = prefill_kv(lm, [row], position_start=start, batch_size=1)
    ((there, _),) = prefill_kv(lm, [row], position_start=start + shift, batch_size=1)
    assert shift_problem(lm) is None
    torch.testing.assert_close(shift_keys(lm, here, shift), there, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_sac_composition_of_chunk_aligned_documents_equals_compressing_the_concatenation(arch):
    comp = sac(arch)
    x, y = token_ids(comp, 2 * CHUNK, seed=1), token_ids(comp, 23, seed=2)
    composed = comp.compose([*comp.compress_ids([x]), *comp.compress_ids([y])])
    (joint,) = comp.compress_ids([x + y])
    assert composed.original_length == joint.original_length == len(x) + len(y)
    assert torch.equal(composed.positions, joint.positions)
    torch.testing.assert_close(composed.keys, joint.keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(composed.values, joint.values, atol=1e-5, rtol=1e-4)
    assert comp.generate(composed, QUESTIONS, max_new_tokens=6) == comp.generate(
        joint, QUESTIONS, max_new_tokens=6
    )
    assert composed.meta["composed_of"] == [
        {"original_length": len(x), "compressed_length": 2 * CHUNK // 4},
        {"original_length": len(y), "compressed_length": composed.compressed_length - 8},
    ]


@pytest.mark.parametrize("method", ["icae", "pic", "truncation", "no_context"])
def test_other_methods_compose_by_moving_their_positions(method, tiny):
    options = {"lora_rank": 4} if method in ("icae", "pic") else {}
    comp = cc.build_compressor(method, tiny, ratio=4, **options)
    a, b = comp.compress([TEXT, "A short one about Paris."])
    composed = comp.compose([a, b])
    assert composed.original_length == a.original_length + b.original_length
    assert composed.compressed_length == a.compressed_length + b.compressed_length
    if a.compressed_length:
        shifted = torch.cat([a.positions, b.positions + a.original_length])
        assert torch.equal(composed.positions, shifted)
    if composed.kind == "embeds":
        assert torch.equal(composed.embeds, torch.cat([a.embeds, b.embeds]))
    elif a.compressed_length:  # values never move; keys of the first context neither
        assert torch.equal(composed.values[:, :, : a.compressed_length], a.values)
        assert torch.equal(composed.keys[:, :, : a.compressed_length], a.keys)
    assert len(comp.generate(composed, QUESTIONS, max_new_tokens=4)) == 2
    assert comp.compose([a]) is a


def test_bad_compositions_are_clear_errors():
    comp = sac()
    ctx = comp.compress(TEXT)
    with pytest.raises(InvalidInputError, match="at least one context"):
        comp.compose([])
    other = sac()
    randomize_trainables(other, seed=7)
    with pytest.raises(ContextMismatchError, match="other trained weights"):
        comp.compose([ctx, other.compress(TEXT)])
    truncation = cc.build_compressor("truncation", tiny_model(), ratio=4)
    with pytest.raises(ContextMismatchError, match="made by method 'truncation'"):
        comp.compose([ctx, truncation.compress(TEXT)])
    long = ctx.__class__(**{**ctx.__dict__, "original_length": comp.max_context_tokens - 5})
    with pytest.raises(ContextTooLongError, match=r"would stand for \d+ tokens .* compose fewer"):
        comp.compose([ctx, long])
    with pytest.raises(InvalidInputError, match="CompressedContext"):
        comp.compose([ctx, "not a context"])
    comp.lm.config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(InvalidInputError, match="'dynamic' changes its frequencies"):
        comp.compose([ctx, ctx])


def test_the_service_answers_against_composed_contexts(tmp_path):
    import httpx

    from ctxcompress.serving.app import create_app
    from ctxcompress.serving.background import serve_in_thread
    from tests.test_serving import DOCS, build

    ref = build()
    expected = ref.generate(ref.compose(ref.compress(DOCS[:2])), QUESTIONS, max_new_tokens=5)
    expected_reversed = ref.generate(
        ref.compose(ref.compress(DOCS[1::-1])), QUESTIONS[0], max_new_tokens=5
    )
    app = create_app(build(), tmp_path / "store", max_wait_ms=1)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        made = client.post("/v1/contexts", json={"documents": DOCS[:2]}).json()["contexts"]
        ids = [c["id"] for c in made]
        r = client.post(
            "/v1/answers", json={"context_ids": ids, "questions": QUESTIONS, "max_new_tokens": 5}
        )
        assert r.status_code == 200, r.text
        assert r.json()["context_ids"] == ids
        assert [a["answer"] for a in r.json()["answers"]] == expected
        chat = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": QUESTIONS[0]}],
                "context_ids": ids[::-1],
                "max_tokens": 5,
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == expected_reversed
        assert chat.json()["context_ids"] == ids[::-1]
        bad = {
            "empty": ({"context_ids": [], "question": "q"}, 422),
            "unknown": ({"context_ids": [ids[0], "f" * 64], "question": "q"}, 404),
            "no question": ({"context_ids": ids}, 422),
        }
        for name, (body, status) in bad.items():
            r = client.post("/v1/answers", json=body)
            assert r.status_code == status, (name, r.text)
            assert set(r.json()) == {"error"}, name
        both = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "q"}],
                "context_id": ids[0],
                "context_ids": ids,
            },
        )
        assert both.status_code == 422 and "context_ids" in both.json()["error"]["message"]
        too_many = client.post("/v1/answers", json={"context_ids": ids * 9, "question": "q"})
        assert too_many.status_code == 422 and "at most" in too_many.json()["error"]["message"]


def test_evaluation_can_answer_from_composed_passages(tiny):
    from ctxcompress.data.records import QAExample
    from ctxcompress.evaluation import evaluate

    comp = sac()
    p1, p2, p3 = TEXT, "A short one about Paris.", "The fox met the dog in 1987."
    examples = [
        QAExample(f"{p1}\n\n{p2}", QUESTIONS[0], ("the committee",), "a", {}),
        QAExample(f"{p2}\n\n{p3}", QUESTIONS[1], ("Paris",), "b", {}),
    ]
    result = evaluate(comp, examples, max_new_tokens=4, progress=False, compose_passages=True)
    assert result.info["passages"] == {"used": 4, "compressed": 3}  # p2 compressed once
    a, b, c = comp.compress([p1, p2, p3])
    expected = comp.generate(comp.compose([b, c]), QUESTIONS[1], max_new_tokens=4, stop=["\n"])
    assert result.predictions[1].prediction == expected
    assert result.predictions[0].original_length == a.original_length + b.original_length


def test_partial_rotary_keys_shift_only_their_rotary_dimensions():
    """Phi-3 style partial RoPE (half the head dimensions rotate): the rest stays put."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from ctxcompress.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = Phi3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        partial_rotary_factor=0.5,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    lm = Phi3ForCausalLM(config).eval()
    row = list(range(5, 25))
    ((here, _),) = prefill_kv(lm, [row], position_start=3, batch_size=1)
    ((there, _),) = prefill_kv(lm, [row], position_start=3 + 41, batch_size=1)
    moved = shift_keys(lm, here, 41)
    torch.testing.assert_close(moved, there, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved[..., 8:], here[..., 8:])  # 16-dim heads, 8 rotate
    torch.testing.assert_close(
        shift_keys(lm, shift_keys(lm, here, 20), 21), moved, atol=1e-5, rtol=1e-4
    )
