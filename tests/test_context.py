"""CompressedContext: persistence, corruption, mismatch refusal, cache conversion."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import ctxcompress as cc
from ctxcompress.context import CompressedContext
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, make_sac, randomize_trainables


@pytest.fixture
def sac(tiny):
    comp = make_sac(tiny, ratio=4)
    randomize_trainables(comp)
    return comp


def test_save_load_round_trips_bit_exactly(sac, tmp_path):
    ctx = sac.compress(TEXT * 10)
    path = ctx.save(tmp_path / "doc.ctx")
    back = cc.CompressedContext.load(path)
    assert torch.equal(back.keys, ctx.keys) and torch.equal(back.values, ctx.values)
    assert torch.equal(back.positions, ctx.positions)
    assert back.header() == ctx.header()
    assert back.kind == "kv" and back.method == "sac"
    assert back.original_length == ctx.original_length
    assert back.compressed_length == ctx.compressed_length
    # The loaded context answers exactly like the original.
    qs = ["Who wrote the report?", "Where?"]
    assert sac.generate(sac.load_context(path), qs, max_new_tokens=6) == sac.generate(
        ctx, qs, max_new_tokens=6
    )


def test_embeds_context_round_trips(tmp_path):
    ctx = CompressedContext(
        kind="embeds",
        method="icae",
        base_model="b",
        compressor="c",
        original_length=40,
        embeds=torch.randn(10, 8),
    )
    back = CompressedContext.load(ctx.save(tmp_path / "e.ctx"))
    assert torch.equal(back.embeds, ctx.embeds) and back.compressed_length == 10


def test_save_is_atomic_and_leaves_no_temp_files(sac, tmp_path):
    ctx = sac.compress(TEXT)
    ctx.save(tmp_path / "a.ctx")
    ctx.save(tmp_path / "a.ctx")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ctx"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_header", "bad_json", "empty"])
def test_corrupted_file_gives_a_clear_error(sac, tmp_path, damage):
    path = sac.compress(TEXT).save(tmp_path / "x.ctx")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xffnot a safetensors file" * 10)
    elif damage == "no_header":
        save_file({"keys": torch.zeros(1, 1, 1, 1)}, str(path))
    elif damage == "bad_json":
        save_file({"keys": torch.zeros(1, 1, 1, 1)}, str(path), metadata={"ctxcompress": "{"})
    else:
        path.write_bytes(b"")
    with pytest.raises(cc.CorruptFileError, match="x.ctx"):
        cc.CompressedContext.load(path)


def test_inconsistent_tensors_are_refused(sac, tmp_path):
    ctx = sac.compress(TEXT)
    header = ctx.header() | {"compressed_length": ctx.compressed_length + 1}
    path = tmp_path / "bad.ctx"
    save_file(
        {"keys": ctx.keys.contiguous(), "values": ctx.values.contiguous()},
        str(path),
        metadata={"ctxcompress": json.dumps(header)},
    )
    with pytest.raises(cc.CorruptFileError, match="compressed length"):
        cc.CompressedContext.load(path)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ctx"):
        cc.CompressedContext.load(tmp_path / "nope.ctx")


def test_context_from_another_base_model_is_refused(sac, tmp_path):
    other_base = tiny_model("llama", seed=123)  # same architecture, other weights
    other = make_sac(other_base, ratio=4)
    foreign = other.compress(TEXT)
    with pytest.raises(cc.ContextMismatchError, match="base model"):
        sac.generate(foreign, "Who?")
    path = foreign.save(tmp_path / "foreign.ctx")
    with pytest.raises(cc.ContextMismatchError, match="base model"):
        sac.load_context(path)


def test_context_from_another_method_or_compressor_is_refused(sac, tmp_path):
    ctx = sac.compress(TEXT)
    relabelled = CompressedContext(**{**ctx.__dict__, "method": "pic"})
    with pytest.raises(cc.ContextMismatchError, match="method 'pic'"):
        sac.generate(relabelled, "Who?")
    with pytest.raises(cc.ContextMismatchError, match="method"):
        cc.CompressedContext.load(relabelled.save(tmp_path / "p.ctx"), expect_method="sac")
    # The same method and base model but other trained weights: refused too.
    with torch.no_grad():
        sac.lm_embedding.add_(1.0)
    with pytest.raises(cc.ContextMismatchError, match="compressor"):
        sac.generate(ctx, "Who?")


def test_to_dynamic_cache_shares_memory_and_answering_never_mutates(sac):
    ctx = sac.compress(TEXT * 4)
    keys, values = ctx.keys.clone(), ctx.values.clone()
    cache = ctx.to_dynamic_cache(batch_size=3)
    assert cache.layers[0].keys.shape == (3, *ctx.keys.shape[1:])
    assert cache.get_seq_length() == ctx.compressed_length
    sac.generate(ctx, ["Who?", "What?", "When did it happen?"], max_new_tokens=5)
    assert torch.equal(ctx.keys, keys) and torch.equal(ctx.values, values)


def test_bytes_and_ratio(sac):
    ctx = sac.compress(TEXT * 10)
    n_layers, heads, c, dim = ctx.keys.shape
    assert ctx.num_bytes == 2 * n_layers * heads * c * dim * 4
    assert ctx.ratio == pytest.approx(ctx.original_length / c)
    assert "ratio=" in repr(ctx)
