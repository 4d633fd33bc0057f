"""The GPU targets of issue 22, read off one run of benchmarks/gpu/run.sh (its bench.json and
train_step.json), as a markdown table with each measured value and whether it meets its target.

    python benchmarks/gpu/summarize.py OUT_DIR    # writes OUT_DIR/summary.md and prints it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows_at(bench: dict, length: int, ratio: int | None = None) -> list[dict]:
    return [r for r in bench["rows"] if r["L"] == length and (ratio is None or r["ratio"] == ratio)]


def targets(bench: dict, train: dict | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target; met is None when the run has no such row."""
    out: list[tuple[str, str, bool | None]] = []
    lengths = sorted({r["L"] for r in bench["rows"]})
    short, long = (lengths[0], lengths[-1]) if lengths else (None, None)
    for r in rows_at(bench, short) if short else []:
        value = r["compress_tokens_per_s"] / r["prefill_tokens_per_s"]
        out.append(
            (
                f"compression >= 0.8x prefill throughput (L={short}, r={r['ratio']})",
                f"{value:.2f}x",
                value >= 0.8,
            )
        )
    for r in rows_at(bench, long, 16) if long else []:
        value = r["answer_full_context"]["answer_s"] / r["answer"]["answer_s"]
        out.append(
            (
                f"answer from the 16x context >= 5x faster than full (L={long})",
                f"{value:.1f}x",
                value >= 5,
            )
        )
    for r in bench["rows"]:
        out.append(
            (
                f"16 batched questions >= 8x 16 sequential (L={r['L']}, r={r['ratio']})",
                f"{r['batched_speedup']:.1f}x",
                r["batched_speedup"] >= 8,
            )
        )
    for r in (train or {}).get("rows", []):
        if r["method"] == "plain_lora" or r.get("ratio_to_plain_lora") is None:
            continue
        value = r["ratio_to_plain_lora"]
        out.append(
            (
                f"{r['method']} training step <= 1.3x a plain LoRA step",
                f"{value:.2f}x",
                value <= 1.3,
            )
        )
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    bench = json.loads((folder / "bench.json").read_text())
    train_path = folder / "train_step.json"
    train = json.loads(train_path.read_text()) if train_path.is_file() else None
    machine = bench["machine"]
    lines = [
        f"Device: {machine.get('device_name')} (torch {machine['torch']}, "
        f"{bench['settings']['dtype']}, {bench['settings']['base_model']})",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, met in targets(bench, train):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'NO'} |")
    text = "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
