"""Quality benchmark: every method on SmolLM2-135M and the shared NQ-open oracle data.

Two settings, each trained with the same budget per method (``--steps`` x batch 4 -- by default
200 steps at r4 and 50 at r16, whose steps cost ~4x more on CPU -- with the small settings of
``configs/smollm2/``) on the train split and evaluated on the first
``--eval-limit`` test items:

* ``r4``:  ratio 4 on single gold passages (~150 tokens);
* ``r16``: ratio 16 on 5-passage contexts (~620 tokens: the gold passage among 4 distractors, at a
  position drawn per item and recorded in the predictions).

Trainable methods: SAC, PIC, ICAE, 500x, EPL (QA fine-tuning only: no stage 1 here). Hard
baselines, zero-shot through the model's chat template: truncation to the same budget, full
context, no context. Everything is checkpointed under ``--out``: rerun the same command to
resume (finished trainings and evaluations are reused). Writes ``<out>/<setting>/table.md``,
``<out>/<setting>/quality_vs_ratio.png`` and ``<out>/summary.json`` (with wall times).

    python benchmarks/quality/run.py --out benchmarks/quality/results
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

import ctxcompress as cc
from ctxcompress.data import load_qa
from ctxcompress.evaluation import (
    EvalResult,
    evaluate,
    markdown_table,
    markdown_tables,
    plot_quality_vs_ratio,
)
from ctxcompress.prompts import chat_prompt_options
from ctxcompress.training import Trainer, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the benchmarks package
from benchmarks._common import add_seconds, smollm2_config
from benchmarks._common import command_line as _command_line

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "configs" / "benchmarks" / "quality.yaml").read_text())
SETTINGS: dict[str, dict] = SPEC["settings"]
# Prompt tuning, also trainable, is a baseline of the fair benchmark, not of this one.
TRAINED = tuple(SPEC["trained"])
HARD = tuple(SPEC["hard"])


def train_method(method: str, setting: str, args, out: Path) -> cc.Compressor:
    spec = SETTINGS[setting]
    config = load_config(
        smollm2_config(method),
        [
            f"output_dir={out / 'train' / method}",
            f"train.steps={args.steps or spec['steps']}",
            f"train.save_every={args.save_every}",
            f"method_options.ratio={spec['ratio']}",
        ],
    )
    config.data[0].options.update(spec["data_options"])
    trainer = Trainer(config)
    trainer.run()
    # The trainer's clock is checkpointed: the total is right even after kills and resumes.
    walls = out / "wall_seconds.json"
    data = json.loads(walls.read_text()) if walls.is_file() else {}
    data[f"train:{method}"] = trainer.train_seconds
    walls.write_text(json.dumps(data, indent=2) + "\n")
    return trainer.compressor


def run_setting(setting: str, args) -> tuple[list[str], list[EvalResult]]:
    """Train and evaluate ``args.methods`` in ``setting`` (reusing finished ones); return the
    names and results of every finished method of the setting, earlier invocations' too."""
    spec = SETTINGS[setting]
    out = args.out / setting
    out.mkdir(parents=True, exist_ok=True)
    examples = load_qa("nq-oracle:test", limit=args.eval_limit, **spec["data_options"])
    for method in args.methods:
        path = out / "eval" / f"{method}.json"
        if path.is_file():
            continue
        if method in TRAINED:
            comp = train_method(method, setting, args, out)
            label = f"{method}@{spec['ratio']}x"
        else:
            base = cc.load_base_model()
            options = chat_prompt_options(base.tokenizer)
            if method == "truncation":
                options["ratio"] = spec["ratio"]
            comp = cc.build_compressor(method, base, **options)
            label = {"truncation": f"truncation@{spec['ratio']}x"}.get(method, method)
            label += " (zero-shot)"
        start = time.perf_counter()
        result = evaluate(comp, examples, max_new_tokens=32, batch_size=16, label=label)
        add_seconds(out / "wall_seconds.json", f"eval:{method}", time.perf_counter() - start)
        result.info["setting"] = setting
        result.save(path)
        del comp
    done, results = finished_results(out / "eval")
    table = markdown_tables(results)
    (out / "table.md").write_text(table + "\n")
    plot_quality_vs_ratio(
        [r for r in results if not r.method.startswith("no_context")],
        out / "quality_vs_ratio.png",
        metric="f1",
        title=f"NQ-open oracle test, SmolLM2-135M, setting {setting}",
    )
    return done, results


def finished_results(folder: Path) -> tuple[list[str], list[EvalResult]]:
    """The names and results of the methods with a saved test evaluation in ``folder``, in the
    canonical order (trainable methods, then the hard baselines)."""
    done = [m for m in (*TRAINED, *HARD) if (folder / f"{m}.json").is_file()]
    return done, [EvalResult.load(folder / f"{m}.json") for m in done]


def command_line(args, **overrides) -> str:
    """The benchmark command for ``args``, with ``overrides`` (e.g. ``methods=[...]``)."""
    return _command_line("benchmarks/quality/run.py", args, ("out",), **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quality" / "results")
    parser.add_argument("--settings", default="r4,r16")
    parser.add_argument("--methods", default=",".join([*TRAINED, *HARD]))
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: per setting)"
    )
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--eval-limit", type=int, default=100)
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m not in (*TRAINED, *HARD)]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join([*TRAINED, *HARD])}")
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {','.join(SETTINGS)}")
    summary = {
        "command": command_line(args),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "settings": {},
    }
    summary_path = args.out / "summary.json"
    if summary_path.is_file():  # keep the settings that this invocation does not rerun
        summary["settings"] = json.loads(summary_path.read_text()).get("settings", {})
    for setting in args.settings.split(","):
        done, results = run_setting(setting, args)
        walls = json.loads((args.out / setting / "wall_seconds.json").read_text())
        summary["settings"][setting] = {
            # Reproduces every finished method of the setting, not only this invocation's.
            "command": command_line(args, settings=[setting], methods=done),
            "steps": args.steps or SETTINGS[setting]["steps"],
            "table": markdown_table(results),
            "overall": {r.method: r.overall for r in results},
            "wall_seconds": walls,
        }
        print(markdown_table(results), flush=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
