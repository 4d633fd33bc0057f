"""Quantized contexts (issue 20 part 5): int8 storage on disk and in the service's store.

Invariants: every entry comes back within half a quantization step of the original, in its
dtype; a file holds int8 values plus float32 scales (~1/4 of float32); ``as_stored`` is
exactly what a reload gives; plain files stay format 1 (readable by older versions) while
quantized ones are format 2 (refused by older versions rather than misread); damaged
quantized files raise ``CorruptFileError``."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from typer.testing import CliRunner

import ctxcompress as cc
from ctxcompress import context as context_module
from ctxcompress import quantization
from ctxcompress.cli import app as cli_app
from ctxcompress.errors import CorruptFileError, InvalidInputError
from ctxcompress.serving import ContextStore
from ctxcompress.serving.app import create_app
from ctxcompress.serving.background import serve_in_thread
from tests.conftest import TEXT, TINY_METHOD_OPTIONS, randomize_trainables

QUESTIONS = ["Who wrote the report?", "Where did they meet?"]


def kv_context(layers=2, heads=2, length=5, dim=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(layers, heads, length, dim, generator=gen) * 3
    keys[..., 0] *= 20  # an outlier channel, as real keys have
    values = torch.randn(layers, heads, length, dim, generator=gen)
    return cc.CompressedContext(
        kind="kv",
        method="sac",
        base_model="b",
        compressor="c",
        original_length=4 * length + 1,
        keys=keys.to(dtype),
        values=values.to(dtype),
        positions=torch.arange(length),
    )


def step_bound(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Half a quantization step of every entry (its group's absmax / 127 / 2)."""
    axis = {"keys": 2, "values": 3, "embeds": 1}[name]
    if tensor.numel() == 0:
        return torch.zeros(())
    return tensor.float().abs().amax(dim=axis, keepdim=True) / 127 / 2


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(0, 9), st.integers(1, 16)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_every_entry_comes_back_within_half_a_step(shape, dtype, seed, tmp_path_factory):
    ctx = kv_context(*shape, dtype=dtype, seed=seed)
    path = ctx.save(tmp_path_factory.mktemp("q") / "c.ctx", quantize="int8")
    back = cc.CompressedContext.load(path)
    for name in ("keys", "values"):
        got, want = getattr(back, name), getattr(ctx, name)
        assert got.dtype == dtype and got.shape == want.shape
        error = (got.float() - want.float()).abs()
        # bfloat16 adds its own rounding of the result (8 bits of mantissa).
        slack = want.float().abs() / 128 if dtype == torch.bfloat16 else 1e-6
        assert (error <= step_bound(name, want) * (1 + 1e-5) + slack).all()
    assert torch.equal(back.positions, ctx.positions)
    stored = ctx.as_stored("int8")
    for name in ("keys", "values"):
        assert torch.equal(getattr(stored, name), getattr(back, name))


def test_files_are_a_quarter_of_float32_and_quantized_ones_are_format_2(tmp_path):
    ctx = kv_context(layers=4, heads=4, length=64, dim=32)
    plain = ctx.save(tmp_path / "plain.ctx")
    small = ctx.save(tmp_path / "int8.ctx", quantize="int8")
    tensor_bytes = ctx.num_bytes
    assert ctx.stored_bytes() == tensor_bytes
    assert ctx.stored_bytes("int8") < 0.3 * tensor_bytes
    assert small.stat().st_size < 0.32 * plain.stat().st_size
    headers = {}
    for path in (plain, small):
        with safe_open(str(path), framework="pt") as f:
            headers[path.name] = json.loads(f.metadata()["ctxcompress"])
            if path == small:
                assert f.get_tensor("keys").dtype == torch.int8
                assert f.get_tensor("keys.scale").shape == (4, 4, 1, 32)  # per channel
                assert f.get_tensor("values.scale").shape == (4, 4, 64, 1)  # per token
    assert (
        headers["plain.ctx"]["format_version"] == 1 and "quantization" not in headers["plain.ctx"]
    )
    assert headers["int8.ctx"]["format_version"] == 2
    assert headers["int8.ctx"]["quantization"] == {"scheme": "int8", "dtype": "torch.float32"}


def test_a_reader_from_before_quantization_refuses_the_file(tmp_path, monkeypatch):
    path = kv_context().save(tmp_path / "c.ctx", quantize="int8")
    monkeypatch.setattr(context_module, "FORMAT_VERSION", 1)
    with pytest.raises(CorruptFileError, match="format 2.*Upgrade"):
        cc.CompressedContext.load(path)


def test_damaged_quantized_files_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = kv_context().save(tmp_path / "c.ctx", quantize="int8")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["ctxcompress"])
    tensors = load_file(str(path))

    def write(tensors, header):
        save_file(tensors, str(path), metadata={"ctxcompress": json.dumps(header)})

    write({k: v for k, v in tensors.items() if k != "keys.scale"}, header)
    with pytest.raises(CorruptFileError, match="quantized 'keys' is damaged"):
        cc.CompressedContext.load(path)
    write(tensors | {"values.scale": torch.ones(1)}, header)
    with pytest.raises(CorruptFileError, match="quantized 'values' is damaged.*shape"):
        cc.CompressedContext.load(path)
    write(tensors, header | {"quantization": {"scheme": "int3", "dtype": "float32"}})
    with pytest.raises(CorruptFileError, match="damaged quantization header"):
        cc.CompressedContext.load(path)
    with pytest.raises(InvalidInputError, match="unknown quantization 'int4'; use one of int8"):
        kv_context().save(tmp_path / "x.ctx", quantize="int4")
    assert not (tmp_path / "x.ctx").exists()


@pytest.mark.parametrize("method", ["sac", "icae", "pic", "truncation", "no_context"])
def test_quantized_contexts_answer_like_the_float_ones(method, tmp_path, tiny):
    comp = cc.build_compressor(method, tiny, ratio=4, **TINY_METHOD_OPTIONS.get(method, {}))
    randomize_trainables(comp)
    ctx = comp.compress(TEXT * 2)
    path = ctx.save(tmp_path / "c.ctx", quantize="int8")
    back = comp.load_context(path)
    assert back.kind == ctx.kind and back.compressed_length == ctx.compressed_length
    q_ids = comp.question_ids(QUESTIONS[0])
    want = comp.decoder_forward([ctx], [q_ids])[0, -1]
    got = comp.decoder_forward([back], [q_ids])[0, -1]
    assert torch.cosine_similarity(got, want, dim=0) > 0.999
    assert len(comp.generate(back, QUESTIONS, max_new_tokens=4)) == 2
    assert quantization.check_scheme(None) is None


def test_a_quantized_store_hands_out_what_a_reload_gives(tmp_path, tiny):
    comp = cc.build_compressor("sac", tiny, ratio=4, lora_rank=4)
    ctx = comp.compress(TEXT * 3)
    store = ContextStore(tmp_path / "s", quantize="int8")
    plain = ContextStore(tmp_path / "p")
    entry, created = store.put("a" * 64, ctx)
    plain_entry, _ = plain.put("a" * 64, ctx)
    assert created and entry["bytes"] < 0.35 * plain_entry["bytes"]
    cached = store.get("a" * 64)  # from the memory cache
    reopened = ContextStore(tmp_path / "s", cache_bytes=0).get("a" * 64)  # from the file
    for name in ("keys", "values"):
        assert torch.equal(getattr(cached, name), getattr(reopened, name))
        assert not torch.equal(getattr(cached, name), getattr(ctx, name))
    capped = ContextStore(
        tmp_path / "c", quantize="int8", max_bytes=ctx.stored_bytes("int8") + 4096
    )
    capped.put("b" * 64, ctx)  # fits as int8 although the float context would not
    assert ctx.num_bytes > capped.max_bytes
    with pytest.raises(InvalidInputError, match="unknown quantization"):
        ContextStore(tmp_path / "x", quantize="fp4")


def test_cli_compress_quantize_and_answer(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.ctx"
    base = ["--base-model", "tiny", "--ratio", "4"]
    result = runner.invoke(
        cli_app,
        ["compress", "--text", TEXT * 3, "-o", str(out), *base, "--quantize", "int8", "--json"],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["quantize"] == "int8" and info["file_bytes"] < info["bytes"]
    answer = runner.invoke(
        cli_app,
        ["generate", "--context", str(out), *base, "--question", "Who?", "--max-new-tokens", "3"],
    )
    assert answer.exit_code == 0, answer.output
    bad = runner.invoke(
        cli_app,
        ["compress", "--text", "x", "-o", str(tmp_path / "b.ctx"), *base, "--quantize", "int4"],
    )
    assert bad.exit_code != 0 and "unknown quantization 'int4'" in bad.output
    assert not (tmp_path / "b.ctx").exists()


def test_the_service_stores_int8_and_answers_from_it(tmp_path):
    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=8)
    app = create_app(comp, tmp_path / "store", store_quantize="int8", max_wait_ms=1)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        made = client.post("/v1/contexts", json={"text": TEXT * 3})
        assert made.status_code == 201, made.text
        (entry,) = made.json()["contexts"]
        answer = client.post(
            f"/v1/contexts/{entry['id']}/answers",
            json={"question": QUESTIONS[0], "max_new_tokens": 4},
        )
        assert answer.status_code == 200, answer.text
    (path,) = (tmp_path / "store" / "contexts").glob("*.ctx")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["ctxcompress"])["quantization"]["scheme"] == "int8"
    stored = comp.load_context(path)
    expected = comp.generate(stored, QUESTIONS[0], max_new_tokens=4)
    assert answer.json()["answers"][0]["answer"] == expected
