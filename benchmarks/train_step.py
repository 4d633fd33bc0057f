"""Seconds per training step of every trainable method on the embedded SmolLM2-135M (CPU).

Uses the small settings of ``configs/smollm2/*-nq-r4.yaml`` (batch 4, LoRA rank 32, ratio 4,
NQ-open oracle train passages); reports the median over ``--steps`` timed steps after one
warm-up step, plus tokens/s (context + target tokens).

    python benchmarks/train_step.py --steps 5 --out docs/benchmarks/train_step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.models import load_base_model
from ctxcompress.training import Trainer, load_config

FOLDER = {"500x": "xc500"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(TRAINABLE_METHODS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every method, e.g. --set train.mixed_precision=bf16",
    )
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    rows = []
    for method in args.methods.split(","):
        config_path = root / "configs" / "smollm2" / f"{FOLDER.get(method, method)}-nq-r4.yaml"
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(
                config_path,
                [
                    f"output_dir={out}",
                    f"train.steps={args.steps + 1}",
                    "train.save_every=100000",
                    "train.log_every=1",
                    *args.set,
                ],
            )
            times: list[float] = []
            tokens: list[int] = []
            last = [time.perf_counter()]

            def on_step(step: int, metrics: dict, times=times, tokens=tokens, last=last) -> None:
                now = time.perf_counter()
                if step > 1:  # the first step is warm-up
                    times.append(now - last[0])
                    tokens.append(metrics["tokens"])
                last[0] = now

            trainer = Trainer(cfg, base_model=load_base_model("embedded"), on_step=on_step)
            last[0] = time.perf_counter()
            trainer.run()
        s = statistics.median(times)
        rows.append(
            {
                "method": method,
                "s_per_step": s,
                "batch_size": cfg.train.batch_size,
                "tokens_per_s": statistics.median(
                    t / d for t, d in zip(tokens, times, strict=True)
                ),
                "steps_timed": len(times),
                "overrides": args.set,
            }
        )
        print(f"{method}: {s:.2f} s/step", flush=True)
    machine = {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
    table = ["| method | s / step (median) | tokens / s | batch |", "|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['method']} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['batch_size']} |"
        )
    print("\n".join(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "machine": machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
