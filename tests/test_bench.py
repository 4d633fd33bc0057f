"""The speed benchmark runs and reports every measurement (numbers are not asserted here:
speed is measured by `ctxcompress bench`, never by timed unit tests)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import ctxcompress as cc
from ctxcompress.bench import BenchSettings, markdown_report, run_speed_benchmark
from ctxcompress.cli import app
from ctxcompress.errors import InvalidInputError, ModelLoadError
from ctxcompress.models import load_tokenizer


def test_speed_benchmark_rows_are_complete():
    result = run_speed_benchmark(
        BenchSettings(
            lengths=(64, 130),
            ratios=(4,),
            repeats=1,
            warmup=0,
            max_new_tokens=3,
            questions=2,
            method_options={"lora_rank": 4},
        )
    )
    assert [r["L"] for r in result["rows"]] == [64, 130]
    for row in result["rows"]:
        assert row["C"] < row["L"]
        # KV bytes are exactly (C / L) x the full context's bytes (same layers and heads).
        assert abs(row["kv_bytes_vs_expected"] - 1) < 1e-9
        assert row["kv_bytes_full"] > row["kv_bytes"] > 0
        for key in ("compress_vs_prefill", "answer_vs_plain_prompt_of_C", "batched_speedup"):
            assert row[key] > 0
    assert "compress / prefill" in markdown_report(result)


def test_bench_command_writes_json_and_table(tmp_path):
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--lengths",
            "64",
            "--ratios",
            "4",
            "--repeats",
            "1",
            "--max-new-tokens",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["rows"][0]["L"] == 64 and out.with_suffix(".md").is_file()


def test_bench_records_device_and_dtype_and_refuses_missing_cuda(monkeypatch):
    result = run_speed_benchmark(
        BenchSettings(
            lengths=(64,),
            ratios=(4,),
            repeats=1,
            warmup=0,
            max_new_tokens=2,
            questions=2,
            device="cpu",
            dtype="bfloat16",
        )
    )
    assert result["settings"]["device"] == "cpu" and result["settings"]["dtype"] == "bfloat16"
    assert result["rows"][0]["compress_peak_bytes"] is None  # peak memory is a CUDA reading
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert BenchSettings().resolved() == ("cpu", "float32")
    with pytest.raises(InvalidInputError, match="no CUDA device"):
        BenchSettings(device="cuda").resolved()


def test_random_shapes_have_the_real_models_sizes():
    """``random:<shape>`` is a real model's shape with random weights (speed benchmarks)."""
    base = cc.load_base_model("random:llama-3.2-1b", dtype="bfloat16", device="meta")
    params = sum(p.numel() for p in base.model.parameters())
    assert 1.23e9 < params < 1.24e9  # Llama-3.2-1B: 1.236B with tied embeddings
    assert base.model.dtype == torch.bfloat16 and base.source == "random:llama-3.2-1b"
    _, limit = load_tokenizer("random:llama-3.2-1b")
    assert limit == 131072
    with pytest.raises(ModelLoadError, match="known shapes: random:llama-3.2-1b"):
        cc.load_base_model("random:gpt-9")


def test_bench_measures_a_trained_compressor_with_its_own_method_and_ratio(tmp_path):
    """``--compressor``: a saved compressor (or ``embedded:<name>``) is measured as trained,
    on the base model it records; the flags that would contradict it are refused."""
    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=8, lora_rank=4)
    folder = comp.save_pretrained(tmp_path / "sac")
    result = run_speed_benchmark(
        BenchSettings(
            compressor=str(folder),
            ratios=(4, 16),  # ignored: the compressor's own ratio
            lengths=(64,),
            repeats=1,
            warmup=0,
            max_new_tokens=2,
            questions=2,
        )
    )
    (row,) = result["rows"]
    assert (row["method"], row["ratio"], row["C"]) == ("sac", 8, 64 // 8)
    recorded = result["settings"]  # what was measured, not the ignored flags
    assert (recorded["method"], recorded["ratios"], recorded["base_model"]) == ("sac", [8], "tiny")
    assert "| KV KiB (C / full) |" in markdown_report(result)
    for extra in (["--ratios", "4"], ["--method", "pic"], ["--base-model", "embedded"]):
        refused = CliRunner().invoke(app, ["bench", "--compressor", str(folder), *extra])
        assert refused.exit_code != 0
        assert "drop --method, --ratios and --base-model" in refused.output


def test_interleaved_timing_runs_in_turns_and_compares_within_a_round():
    """Each function runs once per round in a rotating order (a drifting machine slows them
    alike); a ratio is the median of per-round ratios."""
    from ctxcompress.bench.speed import interleaved_seconds, round_ratio

    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = interleaved_seconds(fns, repeats=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    drifting = {"x": [2.0, 20.0, 4.0], "y": [1.0, 10.0, 1.0]}  # the machine slowed 10x
    assert round_ratio(drifting, "x", "y") == 2.0
