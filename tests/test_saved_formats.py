"""Compressors and contexts saved by older code still load, unchanged (issue 18).

``tests/fixtures/saved_v1/`` was written by ``tests/fixtures/make_saved_v1.py`` before the
``methods/base.py`` split (format version 1). Loading must give the same fingerprint, the
stored context must be accepted, and answers must match what the old code produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ctxcompress as cc

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("method", ["sac", "icae"])
def test_a_compressor_saved_by_old_code_loads_with_its_fingerprint_and_answers(method):
    comp = cc.load_compressor(FIXTURES / method)
    assert comp.method == method
    assert comp.fingerprint == EXPECTED[method]["fingerprint"]
    ctx = comp.load_context(FIXTURES / f"{method}.ctx")
    fresh = comp.compress(EXPECTED["text"])
    stored = {"sac": ("keys", "values", "positions"), "icae": ("embeds", "positions")}[method]
    assert all(getattr(ctx, name) is not None for name in stored)
    for name in ("keys", "values", "embeds", "positions"):
        old, new = getattr(ctx, name, None), getattr(fresh, name, None)
        assert (old is None) == (new is None), name
        if old is not None:
            torch.testing.assert_close(old, new)
    answers = comp.generate(ctx, EXPECTED["questions"], max_new_tokens=4)
    assert answers == EXPECTED[method]["answers"]
