"""The speed benchmark runs and reports every measurement (numbers are not asserted here:
speed is measured by `ctxcompress bench`, never by timed unit tests)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ctxcompress.bench import BenchSettings, markdown_report, run_speed_benchmark
from ctxcompress.cli import app


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
