"""The recipe ablation: which small-budget levers make SAC, PIC and ICAE learn.

On SmolLM2-135M-Instruct and the NQ-open oracle passages at ratio 4 (the fair benchmark's
``r4`` setting), every row trains the same number of QA steps from scratch on the same
batches (same data, seed, batch, optimiser; no stage 1), with a dev-F1 point every
``--curve-every`` steps and a test evaluation at the end. Per method:

* ``today``: the fair benchmark's settings (LoRA rank 32 on q/v, lr 2e-4, no sink,
  learned vectors from N(0, 0.02), cross-entropy on the answer only);
* ``sink``: + ``sink_tokens=5`` (BOS and the ``### Context:`` prefix kept as themselves,
  inside the budget);
* ``init``: + ``embedding_init=table`` (learned vectors at token scale) and
  ``train.embedding_lr_scale=10`` (they train at 10x the LoRA lr);
* ``distill``: + distillation (weight 1, T 1) from ``trained_full`` (below);
* ``all``: the three together.

Extra rows: ``sac/all_shared`` (one shared anchor embedding instead of one per slot: at r4
on ~135-token passages only 34 of the 128 per-slot vectors ever train), ``sac/distill_frozen``
(the teacher is the frozen model reading the whole passage, no training), and the
references at the same budget: ``trained_full`` (a LoRA encoder reading the whole passage,
also the distillation teacher, trained first), ``trained_truncation`` (the head of the
passage cut to the compressors' budget: the baseline to beat) and ``pt_none`` (no context,
8 prompt vectors + ``[LM]`` trained: the floor).

Rows, levers, loop settings and run order are defined in ``configs/benchmarks/recipe.yaml``.
Everything is checkpointed under ``--out``; rerun the same command to resume (finished rows,
curve points and evaluations are reused). Rows run in ``RUN_ORDER`` (the references and the
``today``/``all`` pair of every method first, so a partial run already answers the main
question). ``--report docs/training.md`` rewrites the ``recipe`` section of that page from
what has finished, training nothing.

    python benchmarks/recipe/run.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import ctxcompress as cc
from ctxcompress.data import load_qa
from ctxcompress.evaluation import (
    EvalResult,
    difference_legend,
    difference_table,
    evaluate,
    markdown_table,
    replace_section,
)
from ctxcompress.training import Trainer, parse_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._common import (  # noqa: E402
    add_seconds,
    command_line,
    load_json,
    plot_curves,
    train_with_dev_curve,
    write_json,
)

SPEC = yaml.safe_load((ROOT / "configs" / "benchmarks" / "recipe.yaml").read_text())
RATIO = SPEC["ratio"]
SINK = SPEC["sink_tokens"]
METHODS = tuple(SPEC["methods"])
TEACHER = SPEC["levers"]["distill"]["distill"]


def _row(method: str, levers: list[str] = (), options=None, distill: str | None = None) -> dict:
    """A row: its method, its options (the levers', then its own), train overrides, teacher."""
    row: dict[str, Any] = {"method": method, "options": {}, "train": {}, "distill": distill}
    for name in levers:
        lever = SPEC["levers"][name]
        row["options"].update(lever.get("options", {}))
        row["train"].update(lever.get("train", {}))
        row["distill"] = lever.get("distill", row["distill"])
    row["options"].update(options or {})
    return row


ROWS: dict[str, dict[str, Any]] = {
    **{name: _row(**spec) for name, spec in SPEC["references"].items()},
    **{f"{m}/{v}": _row(m, levers) for m in METHODS for v, levers in SPEC["variants"].items()},
    **{name: _row(**spec) for name, spec in SPEC["extra_rows"].items()},
}
RUN_ORDER = tuple(SPEC["run_order"])
assert set(RUN_ORDER) == set(ROWS)


def file_name(row: str) -> str:
    return row.replace("/", "-")


def row_config(row: str, args, out: Path) -> Any:
    spec = ROWS[row]
    config: dict[str, Any] = {
        "method": spec["method"],
        "base_model": "embedded",
        "method_options": {**SPEC["options"], "ratio": RATIO, **spec["options"]},
        "data": [dict(d) for d in SPEC["data"]],
        "train": {
            **SPEC["loop"],
            "steps": args.steps,
            "save_every": args.curve_every,
            **spec["train"],
        },
        "output_dir": str(out / "train" / file_name(row)),
    }
    if spec["distill"]:
        teacher = spec["distill"]
        if teacher == TEACHER:
            teacher = str(out / "train" / TEACHER / "compressor")
        config["distill"] = {"weight": 1.0, "temperature": 1.0, "teacher": teacher}
    return parse_config(config)


def train_row(row: str, args, out: Path, dev) -> cc.Compressor:
    trainer = Trainer(row_config(row, args, out))
    if ROWS[row]["options"].get("sink_tokens"):
        prefix = trainer.compressor.context_prefix_ids()
        assert len(prefix) == SINK, f"the context prefix is {len(prefix)} tokens, not {SINK}"
    train_with_dev_curve(trainer, row, dev, out, args.curve_every, tag="recipe")
    times = load_json(out / "train_seconds.json", {})
    times[row] = {
        "train_seconds": trainer.train_seconds,
        "train_cpu_seconds": trainer.train_cpu_seconds,
    }
    write_json(out / "train_seconds.json", times)
    return trainer.compressor


def run(args) -> None:
    out = args.out
    dev = load_qa("nq-oracle:dev", limit=args.dev_limit)
    test = load_qa("nq-oracle:test", limit=args.eval_limit)
    for row in args.rows:
        path = out / "eval" / f"{file_name(row)}.json"
        if path.is_file():
            continue
        if ROWS[row]["distill"] == TEACHER and not (out / "eval" / f"{TEACHER}.json").is_file():
            raise SystemExit(f"{row} distils from {TEACHER}: run that row first")
        comp = train_row(row, args, out, dev)
        start = time.perf_counter()
        result = evaluate(comp, test, max_new_tokens=32, batch_size=16, label=row)
        add_seconds(out / "wall_seconds.json", f"eval:{row}", time.perf_counter() - start)
        result.save(path)
        print(f"[recipe] {row}: test F1 {100 * result.overall['f1']:.1f}", flush=True)
        del comp


# ----------------------------------------------------------------------------- report
def finished(out: Path) -> dict[str, EvalResult]:
    folder = out / "eval"
    return {
        row: EvalResult.load(folder / f"{file_name(row)}.json")
        for row in ROWS
        if (folder / f"{file_name(row)}.json").is_file()
    }


def curve_table(curves: dict[str, list[dict]]) -> str:
    steps = sorted({p["step"] for points in curves.values() for p in points})
    lines = [
        "| row | " + " | ".join(f"step {s}" for s in steps) + " | CPU min |",
        "|---|" + "---|" * (len(steps) + 1),
    ]
    for row in (r for r in ROWS if r in curves):
        f1 = {p["step"]: f"{100 * p['f1']:.1f}" for p in curves[row]}
        cpu = curves[row][-1]["train_cpu_seconds"] / 60
        lines.append(f"| {row} | " + " | ".join(f1.get(s, "") for s in steps) + f" | {cpu:.1f} |")
    return "\n".join(lines)


def report(args, page: Path) -> None:
    out = args.out
    results = finished(out)
    parts = [
        f"Produced by `{args.command}` (resumes where it stopped; `--report {page}` rewrites "
        f"this section from what has finished). SmolLM2-135M-Instruct, ratio {RATIO}, NQ-open "
        f"oracle: {args.steps} QA steps per row from scratch (batch 4, the same batches for "
        f"every row), dev F1 on the first {args.dev_limit} dev items every {args.curve_every} "
        f"steps, test on the first {args.eval_limit} test items. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}."
    ]
    if results:
        rows = list(results.values())
        parts.append(markdown_table(rows))
        # Each row against its method's `today` row and against trained truncation.
        for method in METHODS:
            mine = [results[r] for r in results if r.startswith(f"{method}/")]
            refs = [results[r] for r in (f"{method}/today", "trained_truncation") if r in results]
            if mine and refs:
                parts.append(f"**{method}**: " + difference_legend(refs))
                parts.append(difference_table(mine, refs))
    missing = [r for r in RUN_ORDER if r not in results]
    if missing:
        parts.append(f"Not finished yet: {', '.join(missing)}.")
    curves = load_json(out / "curves.json", {})
    if curves:
        plot = page.parent / "results" / "recipe.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        draw(curves, plot, args)
        parts.append(f"![recipe learning curves](results/{plot.name})")
        parts.append("Dev F1 (%) by QA step, and the CPU minutes of each row's training:")
        parts.append(curve_table(curves))
    parts.append("Every prediction: `benchmarks/recipe/results/eval/*.json`.")
    replace_section(page, "recipe", "\n\n".join(parts))
    print(f"written {page}")


def draw(curves: dict[str, list[dict]], path: Path, args) -> None:
    plot_curves(
        curves,
        path,
        f"Recipe ablation: NQ-open dev (first {args.dev_limit}), ratio {RATIO}, SmolLM2-135M",
        "QA step (from scratch)",
        "training compute (CPU minutes, all threads)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recipe" / "results")
    parser.add_argument("--rows", default=",".join(RUN_ORDER), help="comma-separated")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--curve-every", type=int, default=25)
    parser.add_argument("--dev-limit", type=int, default=50)
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument("--report", type=Path, metavar="PAGE")
    args = parser.parse_args()
    args.rows = list(dict.fromkeys(r for r in args.rows.split(",") if r))
    if unknown := [r for r in args.rows if r not in ROWS]:
        parser.error(f"unknown rows {unknown}; known: {list(ROWS)}")
    args.command = command_line(
        "benchmarks/recipe/run.py", args, ("out", "report", "command", "rows")
    )
    if args.report:
        report(args, args.report)
        return
    run(args)
    curves = load_json(args.out / "curves.json", {})
    if curves:
        draw(curves, args.out / "curves.png", args)
    write_json(
        args.out / "summary.json",
        {
            "command": args.command,
            "overall": {row: r.overall for row, r in finished(args.out).items()},
            "train_seconds": load_json(args.out / "train_seconds.json", {}),
            "wall_seconds": load_json(args.out / "wall_seconds.json", {}),
            "machine": {
                "cpu_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "platform": platform.platform(),
            },
        },
    )


if __name__ == "__main__":
    main()
