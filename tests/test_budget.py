"""Token budgets (issue 20, part 1): ``compress(text, budget=N)`` keeps at most N entries, at
the smallest ratio that fits (recorded in the context), and refuses budgets it cannot meet."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.errors import InvalidInputError
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, TINY_METHOD_OPTIONS, randomize_trainables

# Every method whose length depends on the ratio (full context keeps everything; the
# prompt-tuned bound is taken over truncation for the same reason).
OPTIONS = {m: o for m, o in TINY_METHOD_OPTIONS.items() if m != "full_context"}
OPTIONS["prompt_tuned"] = {**OPTIONS["prompt_tuned"], "context": "truncation"}


def build(method: str, **extra) -> cc.Compressor:
    comp = cc.build_compressor(method, tiny_model(), ratio=2, **OPTIONS[method], **extra)
    randomize_trainables(comp)
    return comp


@pytest.mark.parametrize("method", list(OPTIONS))
@pytest.mark.parametrize("budget", [12, 20, 55])
def test_a_budget_is_met_at_the_smallest_ratio_that_fits(method, budget):
    comp = build(method, chunk_size=64)
    texts = [TEXT * 3, TEXT, "A short one about Paris in 1987."]
    contexts = comp.compress(texts, budget=budget)
    for text, ctx in zip(texts, contexts, strict=True):
        n = len(comp.context_ids(text))
        ratio = ctx.meta["ratio"]
        assert ctx.meta["budget"] == budget
        assert ctx.compressed_length <= budget
        assert ctx.compressed_length == comp.length_at(n, ratio)
        assert ratio >= comp.min_ratio
        if ratio > comp.min_ratio:  # one ratio less would not have fitted
            assert comp.length_at(n, ratio - 1) > budget
        # the same as compressing that document alone at that ratio
        with comp.at_ratio(ratio):
            (alone,) = comp.compress_ids([comp.context_ids(text)])
        for name in ("keys", "values", "embeds"):
            if getattr(ctx, name) is not None:
                torch.testing.assert_close(getattr(ctx, name), getattr(alone, name))
        assert isinstance(comp.generate(ctx, "Who wrote it?", max_new_tokens=3), str)
    # The ratio of the config is unchanged, and so is the fingerprint every context carries.
    assert comp.ratio == comp.config.ratio == 2
    assert {c.compressor for c in contexts} == {comp.fingerprint}


def test_learned_methods_never_go_below_their_trained_ratio_the_hard_ones_do():
    sac, trunc = build("sac"), build("truncation")
    text = "A short one about Paris in 1987."
    n = len(sac.context_ids(text))
    assert sac.compress(text, budget=1000).meta["ratio"] == 2  # fewer entries than allowed
    assert sac.compress(text, budget=1000).compressed_length == sac.length_at(n, 2)
    whole = trunc.compress(text, budget=1000)
    assert whole.meta["ratio"] == 1 and whole.compressed_length == n
    with pytest.raises(InvalidInputError, match="ratios >= 2"), sac.at_ratio(1):
        pass


@pytest.mark.parametrize("budget", [0, -3, 2.5, True, "8"])
def test_a_budget_must_be_a_positive_integer(budget):
    with pytest.raises(InvalidInputError, match="budget must be an integer >= 1"):
        build("sac").compress(TEXT, budget=budget)


def test_a_budget_below_what_the_method_must_keep_is_refused_naming_it():
    sac = build("sac", chunk_size=16, sink_tokens=2)
    ids = sac.context_ids(TEXT * 2)
    chunks = -(-len(ids) // 16)
    with pytest.raises(InvalidInputError, match=r"below the \d+ that sac keeps at least"):
        sac.compress(TEXT * 2, budget=chunks - 1)
    full = cc.build_compressor("full_context", tiny_model())
    with pytest.raises(InvalidInputError, match="full_context keeps at least"):
        full.compress(TEXT, budget=5)
    assert full.compress("Paris.", budget=100).meta["ratio"] == 1


def test_the_cli_and_the_service_take_a_budget(tmp_path):
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from ctxcompress.cli import app as cli_app
    from ctxcompress.serving import id_for
    from ctxcompress.serving.app import create_app

    out = tmp_path / "b.ctx"
    args = ["compress", "--base-model", "tiny", "--text", TEXT * 4, "-o", str(out), "--json"]
    done = CliRunner().invoke(cli_app, [*args, "--budget", "30"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["compressed_length"] <= 30 and result["budget"] == 30 and result["r"] > 4
    assert cc.CompressedContext.load(out).meta["ratio"] == result["r"]

    comp = cc.build_compressor("sac", tiny_model(), ratio=4, lora_rank=4)
    with TestClient(create_app(comp, tmp_path / "store")) as client:
        plain = client.post("/v1/contexts", json={"text": TEXT * 4}).json()["contexts"][0]
        tight = client.post("/v1/contexts", json={"text": TEXT * 4, "budget": 30})
        assert tight.status_code == 201, tight.text
        entry = tight.json()["contexts"][0]
        assert entry["id"] == id_for(comp, TEXT * 4, budget=30) != plain["id"]
        assert entry["compressed_length"] <= 30 < plain["compressed_length"]
        assert entry["budget"] == 30 and entry["ratio"] > plain["ratio"] == 4
        answer = client.post(f"/v1/contexts/{entry['id']}/answers", json={"question": "Who?"})
        assert answer.status_code == 200, answer.text
        refused = client.post("/v1/contexts", json={"documents": ["ok", TEXT * 10], "budget": 1})
        assert refused.status_code == 422
        assert refused.json()["error"]["type"] == "invalid_budget"
        assert "document 1" in refused.json()["error"]["message"]
        assert client.post("/v1/contexts", json={"text": "x", "budget": 0}).status_code == 422
