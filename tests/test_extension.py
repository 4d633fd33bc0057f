"""Growing contexts (issue 20 part 4): ``extend`` compresses only what was added.

Invariants: with an open tail (``keep_tail=True``), growing a SAC context by ``y`` equals
compressing ``x + y`` (also over many steps, after a save/load, with an attention sink);
with a closed tail the old entries are untouched and the new text gets chunks of its own;
everything else is a clear error."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.errors import ContextMismatchError, ContextTooLongError, InvalidInputError
from ctxcompress.methods.extension import tail_ids
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, randomize_trainables

CHUNK = 16


def sac(**options):
    comp = cc.build_compressor(
        "sac", tiny_model(), ratio=4, chunk_size=CHUNK, lora_rank=4, **options
    )
    randomize_trainables(comp)
    return comp


def ids_of(comp, n, seed):
    ids = comp.tokenizer(TEXT * 6, add_special_tokens=False).input_ids
    start = int(torch.randint(0, len(ids) - n, (1,), generator=torch.Generator().manual_seed(seed)))
    return ids[start : start + n]


def assert_same(a, b):
    assert a.original_length == b.original_length
    assert torch.equal(a.positions, b.positions)
    torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sink", [0, 2])
@pytest.mark.parametrize("first_length", [7, 16, 40])
def test_an_open_tail_grows_into_exactly_the_whole_texts_context(sink, first_length):
    comp = sac(sink_tokens=sink)
    x = comp.context_ids(TEXT)[:first_length]
    pieces = [ids_of(comp, n, seed) for seed, n in enumerate([5, 30, 11, 16])]
    (ctx,) = comp.compress_ids([x], keep_tail=True)
    assert ctx.meta["tail_ids"] == tail_ids(x, CHUNK)
    whole = list(x)
    for piece in pieces:
        ctx = comp.extend_ids(ctx, piece)
        whole += piece
        (reference,) = comp.compress_ids([whole])
        assert_same(ctx, reference)
        assert ctx.meta["tail_ids"] == tail_ids(whole, CHUNK)
        assert len(ctx.meta["tail_ids"]) < CHUNK
    answer = comp.generate(ctx, "Who wrote the report?", max_new_tokens=5)
    assert answer == comp.generate(reference, "Who wrote the report?", max_new_tokens=5)


def test_the_tail_survives_a_save_and_load(tmp_path):
    comp = sac()
    x, y = comp.context_ids(TEXT)[:21], ids_of(comp, 9, 3)
    comp.compress_ids([x], keep_tail=True)[0].save(tmp_path / "c.ctx")
    grown = comp.extend_ids(comp.load_context(tmp_path / "c.ctx"), y)
    assert_same(grown, comp.compress_ids([x + y])[0])


def test_a_closed_tail_keeps_the_old_entries_and_starts_new_chunks():
    comp = sac()
    x, y = comp.context_ids(TEXT)[:21], ids_of(comp, 20, 4)
    (ctx,) = comp.compress_ids([x])  # no keep_tail: the short last chunk stays as it is
    grown = comp.extend_ids(ctx, y)
    old = ctx.compressed_length
    assert grown.original_length == len(x) + len(y)
    assert grown.compressed_length == old + comp.compressed_length(len(y))
    assert torch.equal(grown.keys[:, :, :old], ctx.keys)
    assert int(grown.positions[old:].min()) >= len(x) + comp.config.position_start
    assert "tail_ids" not in grown.meta
    (whole,) = comp.compress_ids([x + y])
    assert not torch.equal(grown.positions, whole.positions)  # another chunk grid


def test_a_text_extension_tokenizes_without_bos_or_prefix():
    comp = sac()
    ctx = comp.compress("The committee met in Paris.", keep_tail=True)
    grown = comp.extend(ctx, " It wrote a report in 1987.")
    added = comp.tokenizer(" It wrote a report in 1987.", add_special_tokens=False).input_ids
    assert grown.original_length == ctx.original_length + len(added)


def test_bad_extensions_are_clear_errors():
    comp = sac()
    ctx = comp.compress(TEXT, keep_tail=True)
    with pytest.raises(InvalidInputError, match="non-empty text"):
        comp.extend(ctx, "  ")
    with pytest.raises(InvalidInputError, match="no tokens"):
        comp.extend_ids(ctx, [])
    truncation = cc.build_compressor("truncation", tiny_model(), ratio=4)
    with pytest.raises(InvalidInputError, match="truncation contexts cannot be extended"):
        truncation.extend(truncation.compress(TEXT), "more")
    with pytest.raises(InvalidInputError, match="cannot be extended"):
        truncation.compress(TEXT, keep_tail=True)
    other = sac()
    randomize_trainables(other, seed=9)
    with pytest.raises(ContextMismatchError, match="other trained weights"):
        other.extend(ctx, "more text")
    with pytest.raises(ContextTooLongError):
        comp.extend_ids(ctx, [5] * comp.max_context_tokens)
    with pytest.raises(InvalidInputError, match="composed context cannot be extended"):
        comp.extend(comp.compose([ctx, ctx]), "more")
    random_anchors = sac(anchor_selection="random")
    with pytest.raises(InvalidInputError, match="anchor_selection='uniform'"):
        random_anchors.extend(random_anchors.compress(TEXT), "more")


def test_cli_compress_keep_tail_extend_and_generate_from_several(tmp_path):
    import json

    from typer.testing import CliRunner

    from ctxcompress.cli import app

    runner = CliRunner()
    base = ["--base-model", "tiny"]
    first, grown = tmp_path / "a.ctx", tmp_path / "b.ctx"
    made = runner.invoke(app, ["compress", "--text", TEXT, "-o", str(first), *base, "--keep-tail"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        app,
        [
            "extend",
            "-c",
            str(first),
            "-o",
            str(grown),
            "--text",
            " And more text.",
            *base,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["exact"] is True and info["added_tokens"] > 0
    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4)
    expected = comp.extend(comp.compress(TEXT, keep_tail=True), " And more text.")
    assert_same(comp.load_context(grown), expected)
    both = runner.invoke(
        app, ["generate", "-c", str(first), "-c", str(grown), "-q", "Who?", *base, "--json"]
    )
    assert both.exit_code == 0, both.output
    answer = json.loads(both.output.strip().splitlines()[-1])["answers"][0]["answer"]
    composed = comp.compose([comp.load_context(first), comp.load_context(grown)])
    assert answer == comp.generate(composed, "Who?", max_new_tokens=32)
    bad = runner.invoke(
        app, ["extend", "-c", str(tmp_path / "none.ctx"), "-o", str(grown), "--text", "x", *base]
    )
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_the_service_extends_a_stored_context(tmp_path):
    import httpx

    from ctxcompress.serving.app import create_app
    from ctxcompress.serving.background import serve_in_thread
    from tests.test_serving import build

    ref = build()
    expected = ref.extend(ref.compress(TEXT, keep_tail=True), " It was long.")
    app = create_app(build(), tmp_path / "store", max_wait_ms=1)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        (made,) = client.post("/v1/contexts", json={"text": TEXT, "extendable": True}).json()[
            "contexts"
        ]
        assert made["extendable"] is True
        r = client.post(f"/v1/contexts/{made['id']}/extend", json={"text": " It was long."})
        assert r.status_code == 201, r.text
        grown = r.json()
        assert (
            grown["extends"] == made["id"] and grown["original_length"] == expected.original_length
        )
        again = client.post(f"/v1/contexts/{made['id']}/extend", json={"text": " It was long."})
        assert again.status_code == 200 and again.json()["id"] == grown["id"]
        stored = ref.load_context(tmp_path / "store" / "contexts" / f"{grown['id']}.ctx")
        assert_same(stored, expected)
        answer = client.post(
            f"/v1/contexts/{grown['id']}/answers", json={"question": "Who?", "max_new_tokens": 4}
        )
        assert answer.json()["answers"][0]["answer"] == ref.generate(
            expected, "Who?", max_new_tokens=4
        )
        empty = client.post(f"/v1/contexts/{made['id']}/extend", json={"text": " "})
        assert empty.status_code == 422
        missing = client.post(f"/v1/contexts/{'e' * 64}/extend", json={"text": "more"})
        assert missing.status_code == 404
        long = client.post(f"/v1/contexts/{made['id']}/extend", json={"text": "word " * 3000})
        assert long.status_code == 413 and long.json()["error"]["type"] == "context_too_long"
