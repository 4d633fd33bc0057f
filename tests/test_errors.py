"""Bad input gives a clear CtxCompressError naming the problem (never a deep torch error)."""

from __future__ import annotations

import pytest

import ctxcompress as cc
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, make_sac


@pytest.fixture
def sac(tiny):
    return make_sac(tiny, ratio=4)


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        (None, "str"),
        (42, "str"),
        (b"bytes", "str"),
        ([], "non-empty list"),
        (["ok", 3], "str"),
        (["fine", ""], "empty"),
    ],
)
def test_bad_texts(sac, text, match):
    with pytest.raises(cc.InvalidInputError, match=match):
        sac.compress(text)


@pytest.mark.parametrize("ratio", [0, -3, 1.5, "4", True])
def test_bad_ratio(tiny, ratio):
    with pytest.raises(cc.InvalidInputError, match="ratio"):
        cc.build_compressor("sac", tiny, ratio=ratio)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"anchor_embedding": "sometimes"}, "anchor_embedding"),
        ({"encoder_attention": "sideways"}, "encoder_attention"),
        ({"anchor_selection": "best"}, "anchor_selection"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"lora_rank": -1}, "lora_rank"),
        ({"question_template": "no slot"}, "question_template"),
        ({"colour": "red"}, "Unknown option"),
    ],
)
def test_bad_options(tiny, options, match):
    with pytest.raises(cc.InvalidInputError, match=match):
        cc.build_compressor("sac", tiny, **options)


def test_unknown_method(tiny):
    with pytest.raises(cc.InvalidInputError, match="unknown method 'zip'"):
        cc.build_compressor("zip", tiny)


def test_context_longer_than_the_model_positions():
    comp = make_sac(tiny_model(max_positions=64), ratio=4)
    with pytest.raises(cc.ContextTooLongError, match="positions"):
        comp.compress(TEXT * 5)
    ctx = comp.compress("A short text.")
    with pytest.raises(cc.ContextTooLongError, match="max_new_tokens"):
        comp.generate(ctx, "Who?", max_new_tokens=60)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"questions": []}, "at least one question"),
        ({"questions": [""]}, "empty"),
        ({"questions": [3]}, "str"),
        ({"questions": ["a"], "max_new_tokens": 0}, "max_new_tokens"),
        ({"questions": ["a"], "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_generate_arguments(sac, kwargs, match):
    ctx = sac.compress(TEXT)
    with pytest.raises(cc.InvalidInputError, match=match):
        sac.generate(ctx, **kwargs)


def test_context_question_count_mismatch(sac):
    ctx = sac.compress(TEXT)
    with pytest.raises(cc.InvalidInputError, match="2 contexts but 1 questions"):
        sac.generate([ctx, ctx], ["one?"])
    with pytest.raises(cc.InvalidInputError, match="CompressedContext"):
        sac.generate(["not a context"], ["one?"])


def test_unsupported_attention_backend(tmp_path):
    with pytest.raises(cc.ModelLoadError, match="flash_attention_2"):
        cc.load_base_model(tmp_path, attn_implementation="flash_attention_2")


def test_missing_local_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(cc.ModelLoadError, match="no config.json"):
        cc.load_base_model(tmp_path / "empty")


def test_all_errors_are_value_errors():
    for err in (
        cc.InvalidInputError,
        cc.ContextTooLongError,
        cc.ModelLoadError,
        cc.ContextMismatchError,
        cc.CorruptFileError,
    ):
        assert issubclass(err, cc.CtxCompressError) and issubclass(err, ValueError)


@pytest.mark.parametrize(
    "method,options,match",
    [
        ("pic", {"memory_carry": "everything"}, "memory_carry"),
        ("pic", {"context_visibility": "all"}, "context_visibility"),
        ("icae", {"output": "logits"}, "output"),
        ("epl", {"memory_positions": "random"}, "memory_positions"),
        ("truncation", {"truncation": "middle"}, "truncation"),
        ("truncation", {"lora_rank": 4}, "no adapter"),
    ],
)
def test_bad_options_of_other_methods(tiny, method, options, match):
    with pytest.raises(cc.InvalidInputError, match=match):
        cc.build_compressor(method, tiny, **options)
