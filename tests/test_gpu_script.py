"""benchmarks/gpu/run.sh, the one prepared GPU check (issue 22): it refuses a machine without
CUDA at once, and its CPU dry run goes through every step and writes every result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.gpu.summarize import targets

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "run.sh"


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=SCRIPT.parents[2],
        env=os.environ | {"PYTHON": sys.executable} | env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_without_cuda_the_script_stops_at_once_and_says_why(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_script(str(tmp_path / "out"))
    assert result.returncode == 3
    assert "torch sees no CUDA device" in result.stderr and "--dry-run" in result.stderr
    assert not list((tmp_path / "out").glob("*.json"))


def test_the_dry_run_goes_through_every_step(tmp_path):
    out = tmp_path / "out"
    result = run_script(str(out), "--dry-run")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "passed" in (out / "cuda_tests.log").read_text()
    bench = json.loads((out / "bench.json").read_text())
    assert {(r["L"], r["ratio"]) for r in bench["rows"]} == {
        (256, 4),
        (256, 16),
        (1024, 4),
        (1024, 16),
    }
    train = json.loads((out / "train_step.json").read_text())
    assert [r["method"] for r in train["rows"]] == ["sac", "pic", "plain_lora"]
    summary = (out / "summary.md").read_text()
    assert summary.count("| yes |") + summary.count("| NO |") == 9
    # At most 8 files come back from the GPU machine.
    assert len(list(out.iterdir())) <= 8


def test_targets_read_the_right_rows():
    def row(length, ratio, compress, prefill, answer, full, batched):
        return {
            "L": length,
            "ratio": ratio,
            "compress_tokens_per_s": compress,
            "prefill_tokens_per_s": prefill,
            "answer": {"answer_s": answer},
            "answer_full_context": {"answer_s": full},
            "batched_speedup": batched,
        }

    bench = {"rows": [row(8192, 16, 90, 100, 1, 2, 9), row(32768, 16, 50, 100, 1, 6, 7)]}
    train = {
        "rows": [
            {"method": "sac", "ratio_to_plain_lora": 1.2},
            {"method": "plain_lora", "ratio_to_plain_lora": 1.0},
        ]
    }
    got = {name: met for name, _, met in targets(bench, train)}
    assert got == {
        "compression >= 0.8x prefill throughput (L=8192, r=16)": True,
        "answer from the 16x context >= 5x faster than full (L=32768)": True,
        "16 batched questions >= 8x 16 sequential (L=8192, r=16)": True,
        "16 batched questions >= 8x 16 sequential (L=32768, r=16)": False,
        "sac training step <= 1.3x a plain LoRA step": True,
    }
