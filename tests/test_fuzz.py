"""The service under schema-driven fuzzing (schemathesis; issue 21): a bounded, seeded run
of ``benchmarks/fuzz_service.py`` on the tiny model, with and without a token."""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis")

from benchmarks import fuzz_service as fuzzer

import ctxcompress as cc


@pytest.mark.parametrize("token", ["fuzz-token", None], ids=["auth", "open"])
def test_fuzzed_requests_get_no_server_error_and_schema_conforming_answers(token):
    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=8)
    report = fuzzer.fuzz(comp, examples=15, token=token)
    assert not report.failures, "\n\n".join(report.failures)
    assert report.requests >= 150  # every operation, schema-valid and invalid data
    assert not any(status >= 500 for status in report.by_status), report.by_status
    assert report.by_status.get(422, 0) > 0 and any(200 <= s < 300 for s in report.by_status)
    assert report.healthy_after
