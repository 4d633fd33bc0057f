"""Seconds per training step of every trainable method on the embedded SmolLM2-135M (CPU).

Uses the small settings of ``configs/smollm2/*-nq-r4.yaml`` (batch 4, LoRA rank 32, ratio 4,
NQ-open oracle train passages); reports the median over ``--steps`` timed steps after one
warm-up step, plus tokens/s (context + target tokens).

``--variant NAME:KEY=VALUE;KEY=VALUE`` (repeatable) times each method again with those config
overrides, in the same run, and reports each variant's time as a ratio to the plain step:

    python benchmarks/train_step.py --steps 5 --out docs/benchmarks/train_step.json
    python benchmarks/train_step.py --methods sac,pic,icae \
        --variant "distill:distill.weight=1" --out docs/benchmarks/train_step_distill.json

Every row keeps its per-step training losses. A variant trains on the same batches as the
plain step (the sampler is seeded), so its losses minus the plain ones, step by step, are a
paired series: the **parity** table gives their mean with a 95% bootstrap interval, e.g. for
bfloat16 steps against float32 (issue 38, lever 5: a 100-step loss curve within noise):

    python benchmarks/train_step.py --methods sac,pic --steps 100 \
        --set train.mixed_precision=no --variant "bf16:train.mixed_precision=bf16" \
        --out docs/benchmarks/train_step_bf16.json

``plain_lora`` (in ``--methods``) is the reference a compressor's step is judged against: a
plain LoRA fine-tuning step of the base model on the same examples (``prompt_tuned`` reading
the full context, no prompt vectors, the SAC config's LoRA). ``--base-model`` and ``--dtype``
time another model, e.g. ``random:llama-3.2-1b`` in bfloat16 on a GPU (benchmarks/gpu/run.sh);
on CUDA each row adds the peak memory of the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ctxcompress.bench.speed import synchronize
from ctxcompress.evaluation.significance import interval_of
from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.models import load_base_model
from ctxcompress.training import Trainer, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package
from benchmarks._common import smollm2_config

PLAIN_LORA = "plain_lora"
PLAIN_LORA_OPTIONS = "{context: full, prompt_vectors: 0, lora_rank: 32, lora_alpha: 64}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(TRAINABLE_METHODS), help=f"and {PLAIN_LORA}")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--base-model", default="embedded", help="any load_base_model spec")
    parser.add_argument("--dtype", default="float32", help="weights dtype of the base model")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every method, e.g. --set train.mixed_precision=bf16",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE;...",
        help="also time every method with these overrides, e.g. 'distill:distill.weight=1'",
    )
    args = parser.parse_args()
    variants: dict[str, list[str]] = {"plain": []}
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        if not name or not overrides or name in variants:
            parser.error(f"--variant {spec!r}: expected a new NAME:KEY=VALUE[;KEY=VALUE...]")
        variants[name] = overrides.split(";")
    rows = []
    for method in args.methods.split(","):
        for variant, overrides in variants.items():
            row = time_method(method, variant, [*args.set, *overrides], args)
            rows.append(row)
            plain = next(r for r in rows if r["method"] == method and r["variant"] == "plain")
            row["ratio_to_plain"] = row["s_per_step"] / plain["s_per_step"]
            print(f"{method} {variant}: {row['s_per_step']:.2f} s/step", flush=True)
    reference = next((r for r in rows if r["method"] == PLAIN_LORA), None)
    for r in rows:
        r["ratio_to_plain_lora"] = r["s_per_step"] / reference["s_per_step"] if reference else None
    machine = {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "base_model": args.base_model,
        "dtype": args.dtype,
    }
    table = [
        "| method | variant | s / step (median) | x plain | x plain LoRA step | tokens / s | "
        "batch | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lora = r["ratio_to_plain_lora"]
        peak = r["peak_bytes"]
        table.append(
            f"| {r['method']} | {r['variant']} | {r['s_per_step']:.2f} | "
            f"{r['ratio_to_plain']:.2f} | {'-' if lora is None else f'{lora:.2f}'} | "
            f"{r['tokens_per_s']:.0f} | {r['batch_size']} | "
            f"{'-' if peak is None else f'{peak / 2**30:.2f}'} |"
        )
    print("\n".join(table))
    parity = parity_rows(rows)
    if parity:
        print(
            "\nParity: variant loss minus plain loss on the same batches, per step "
            "(mean [95% interval]); relative = mean difference / mean plain loss"
        )
        print("| method | variant | steps | plain loss | variant loss | difference | relative |")
        print("|---|---|---|---|---|---|---|")
        for p in parity:
            print(
                f"| {p['method']} | {p['variant']} | {p['steps']} | {p['plain_loss']:.3f} | "
                f"{p['variant_loss']:.3f} | {p['difference']:+.3f} [{p['low']:+.3f}, "
                f"{p['high']:+.3f}] | {100 * p['relative']:+.1f}% |"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        document = {"rows": rows, "parity": parity, "machine": machine}
        args.out.write_text(json.dumps(document, indent=2) + "\n")


def parity_rows(rows: list[dict]) -> list[dict]:
    """Each variant's per-step losses against its method's plain run on the same batches."""
    out = []
    for row in rows:
        if row["variant"] == "plain":
            continue
        plain = next(r for r in rows if r["method"] == row["method"] and r["variant"] == "plain")
        a, b = row["losses"], plain["losses"]
        difference = interval_of([x - y for x, y in zip(a, b, strict=True)])
        mean_plain = statistics.fmean(b)
        out.append(
            {
                "method": row["method"],
                "variant": row["variant"],
                "steps": len(a),
                "plain_loss": mean_plain,
                "variant_loss": statistics.fmean(a),
                "difference": difference.mean,
                "low": difference.low,
                "high": difference.high,
                "relative": difference.mean / mean_plain,
            }
        )
    return out


def time_method(method: str, variant: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """Median seconds per step of one method under ``overrides`` (first step: warm-up)."""
    steps = args.steps
    if method == PLAIN_LORA:  # the SAC config's data, loop and LoRA, no compression
        config_path = smollm2_config("sac")
        overrides = ["method=prompt_tuned", f"method_options={PLAIN_LORA_OPTIONS}", *overrides]
    else:
        config_path = smollm2_config(method)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            config_path,
            [
                f"output_dir={out}",
                f"train.steps={steps + 1}",
                "train.save_every=100000",
                "train.log_every=1",
                *overrides,
            ],
        )
        times: list[float] = []
        tokens: list[int] = []
        losses: list[float] = []
        last = [time.perf_counter()]

        def on_step(
            step: int, metrics: dict, times=times, tokens=tokens, losses=losses, last=last
        ) -> None:
            synchronize()
            now = time.perf_counter()
            losses.append(metrics["loss"])
            if step > 1:  # the first step is warm-up
                times.append(now - last[0])
                tokens.append(metrics["tokens"])
            last[0] = now

        device = "cuda" if torch.cuda.is_available() else None  # where accelerate trains
        base = load_base_model(args.base_model, dtype=args.dtype, device=device)
        trainer = Trainer(cfg, base_model=base, on_step=on_step)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        last[0] = time.perf_counter()
        trainer.run()
        peak = torch.cuda.max_memory_allocated() if cuda else None
        del trainer, base
        if cuda:
            torch.cuda.empty_cache()
    s = statistics.median(times)
    return {
        "method": method,
        "variant": variant,
        "s_per_step": s,
        "batch_size": cfg.train.batch_size,
        "tokens_per_s": statistics.median(t / d for t, d in zip(tokens, times, strict=True)),
        "steps_timed": len(times),
        "losses": losses,
        "peak_bytes": peak,
        "overrides": overrides,
    }


if __name__ == "__main__":
    main()
