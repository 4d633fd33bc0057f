"""A fair small-scale comparison: every system gets the same budget and the same two stages.

On SmolLM2-135M-Instruct and the shared NQ-open oracle data, at two settings:

* ``r4``:  ratio 4 on single gold passages (~150 tokens);
* ``r16``: ratio 16 on 5-passage contexts (~620 tokens: the gold passage among 4 distractors,
  at a position drawn per item, recorded in every prediction and tabulated).

Systems (all trained with the same data, steps, batch and optimiser; settings, systems, loop
settings and run order are defined in ``configs/benchmarks/fair.yaml``):

* the compressors SAC, PIC, ICAE, 500x, EPL (LoRA rank 32 on q/v, as ``configs/smollm2``);
* ``trained_truncation``: the head of the context cut to the same number of entries as the
  compressors keep (prompt prefix included), encoded by a LoRA
  encoder of the same rank and read by the frozen decoder after a learned ``[LM]``;
* ``trained_full``: the same with the whole context (no compression): the upper bound with
  the compressors' trainable budget;
* ``pt_full`` / ``pt_truncation`` / ``pt_none``: the frozen model reads the whole context /
  its head cut to the budget / nothing, and only a soft prompt (8 vectors + ``[LM]``) is
  trained (~5k parameters instead of LoRA's ~1.8M): the issue's prompt-tuned upper bound,
  the cheapest compressor, the lower bound;
* zero-shot full context and truncation through the chat template, for reference;
* ``<compressor>_recipe``: the five compressors again on the small-budget recipe of the
  "compressors that learn" issue (attention sink, token-scale learned vectors with 10x lr,
  no autoencoding, stage-2 distillation from this setting's ``trained_full``; docs/training.md).

Recipe: stage 1 (``--stage1-steps``) on offline text: the ACLSum full-text papers from PyPI
and the NQ-train long-answer paragraphs, cut into windows; continuation for everyone, plus
autoencoding for the methods whose papers use it (ICAE, 500x, EPL, PIC). Stage 2
(``--stage2-steps``) QA fine-tuning on the NQ train split, starting from stage 1. Learning
curve: dev-split F1 (first ``--dev-limit`` items) every ``--curve-every`` stage-2 steps, with
the cumulative training time, so "reaches a given quality sooner" can be read off in steps
and in seconds. Final scores on the first ``--eval-limit`` test items.

Everything is checkpointed under ``--out``; rerun the same command to resume (finished
stages, curve points and evaluations are reused). Writes per setting ``table.md``,
``curves.json``, ``curves.png``, ``eval/<system>.json``, and ``summary.json`` overall.

    python benchmarks/fair/run.py --out benchmarks/fair/results
"""

from __future__ import annotations

import argparse
import json
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
    markdown_tables,
    replace_section,
)
from ctxcompress.prompts import chat_prompt_options
from ctxcompress.training import Trainer, parse_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._common import (  # noqa: E402
    add_seconds,
    load_json,
    train_with_dev_curve,
    write_json,
)
from benchmarks._common import command_line as _command_line  # noqa: E402
from benchmarks._common import plot_curves as _plot_curves  # noqa: E402

SPEC = yaml.safe_load((ROOT / "configs" / "benchmarks" / "fair.yaml").read_text())
SETTINGS: dict[str, dict[str, Any]] = SPEC["settings"]
SYSTEMS: dict[str, dict[str, Any]] = SPEC["systems"]
ZERO_SHOT = tuple(SPEC["zero_shot"])
DESCRIPTION = {name: s["description"] for name, s in SETTINGS.items()}
RUN_ORDER = tuple(SPEC["run_order"])
DIFFERENCE_REFERENCES = tuple(SPEC["difference_references"])
STAGE1_TEXTS = tuple(SPEC["stage1_texts"])


# ----------------------------------------------------------------------------- configs
def stage_config(system: str, setting: str, stage: int, args, out: Path) -> Any:
    """The training config of one stage of one system (configs/benchmarks/fair.yaml)."""
    spec, info = SETTINGS[setting], SYSTEMS[system]
    ae = bool(info.get("autoencoding"))
    options = {**info["options"], "ratio": spec["ratio"]}
    if ae:
        options["autoencoding"] = True
    if stage == 1:
        data = [{**t, "objective": "continuation"} for t in STAGE1_TEXTS]
        if ae:
            data += [{**t, "objective": "autoencoding"} for t in STAGE1_TEXTS]
        steps = args.stage1_steps
    else:
        data = [{"source": "nq-oracle:train", "objective": "qa", "options": spec["data_options"]}]
        steps = args.stage2_steps
    loop = {
        **SPEC["loop"],
        "steps": steps,
        "save_every": args.curve_every,
        "continuation_max_tokens": spec["window"],
        **info.get("train", {}),
    }
    config = {
        "method": info["method"],
        "base_model": "embedded",
        "method_options": options,
        "data": data,
        "train": loop,
        "output_dir": str(out / "train" / system / f"stage{stage}"),
    }
    if stage == 2 and args.stage1_steps > 0:
        config["init_from"] = str(out / "train" / system / "stage1" / "compressor")
    if stage == 2 and info.get("distill"):
        teacher = out / "train" / info["distill"] / "stage2" / "compressor"
        config["distill"] = {"weight": 1.0, "temperature": 1.0, "teacher": str(teacher)}
    return parse_config(config)


# ----------------------------------------------------------------------------- one system
def stage1_clock(config) -> dict[str, float]:
    """Training seconds of a finished stage 1, from its last metrics line (resume-proof)."""
    lines = (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    return {k: float(last.get(k, 0.0)) for k in ("train_seconds", "train_cpu_seconds")}


def train_system(system: str, setting: str, args, out: Path, dev) -> cc.Compressor:
    """Stage 1, then stage 2 with a dev-F1 point every ``curve_every`` steps.

    Training time comes from the trainer's own clock (kept in its checkpoints), so a run
    that was killed and resumed, or paused, still reports the time its steps took.
    """
    clock = {"train_seconds": 0.0, "train_cpu_seconds": 0.0}
    if args.stage1_steps > 0:
        config = stage_config(system, setting, 1, args, out)
        if not (Path(config.output_dir) / "compressor").is_dir():
            Trainer(config).run()
        clock = stage1_clock(config)
    config = stage_config(system, setting, 2, args, out)
    trainer = Trainer(config)
    train_with_dev_curve(trainer, system, dev, out, args.curve_every, clock=clock, tag="fair")
    times = load_json(out / "train_seconds.json", {})
    times[system] = {
        "stage1": clock,
        "stage2": {
            "train_seconds": trainer.train_seconds,
            "train_cpu_seconds": trainer.train_cpu_seconds,
        },
    }
    write_json(out / "train_seconds.json", times)
    return trainer.compressor


def zero_shot(system: str, setting: str) -> cc.Compressor:
    base = cc.load_base_model()
    options = chat_prompt_options(base.tokenizer)
    if system == "zs_truncation":
        return cc.build_compressor("truncation", base, ratio=SETTINGS[setting]["ratio"], **options)
    return cc.build_compressor("full_context", base, **options)


# ----------------------------------------------------------------------------- reports
def plot_curves(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    # CPU time of the training steps (all threads): unlike wall time, it does not count
    # while the job is paused, and it survives resumption (the trainer checkpoints it).
    _plot_curves(
        curves,
        path,
        title,
        "QA fine-tuning step (after stage 1)",
        "training compute, stage 1 + 2 (CPU minutes, all threads)",
    )


def run_setting(setting: str, args) -> tuple[list[str], list[EvalResult]]:
    spec = SETTINGS[setting]
    out = args.out / setting
    out.mkdir(parents=True, exist_ok=True)
    dev = load_qa("nq-oracle:dev", limit=args.dev_limit, **spec["data_options"])
    test = load_qa("nq-oracle:test", limit=args.eval_limit, **spec["data_options"])
    for system in args.systems:
        path = out / "eval" / f"{system}.json"
        if path.is_file():
            continue
        if system in SYSTEMS:
            teacher = SYSTEMS[system].get("distill")
            if teacher and not (out / "train" / teacher / "stage2" / "compressor").is_dir():
                # The teacher's weights are not kept in git: train it again (deterministic:
                # the same weights; its recorded curve points and test scores are reused).
                train_system(teacher, setting, args, out, dev)
            comp = train_system(system, setting, args, out, dev)
            label = f"{system}@{spec['ratio']}x"
        else:
            comp = zero_shot(system, setting)
            label = f"{system}@{spec['ratio']}x" if system == "zs_truncation" else system
        start = time.perf_counter()
        result = evaluate(comp, test, max_new_tokens=32, batch_size=16, label=label)
        add_seconds(out / "wall_seconds.json", f"eval:{system}", time.perf_counter() - start)
        result.info["setting"] = setting
        result.save(path)
        del comp
    # Every finished system of the setting (earlier invocations' too), in the canonical order.
    done, results = finished_results(setting, args, [*SYSTEMS, *ZERO_SHOT])
    table = markdown_tables(results)
    (out / "table.md").write_text(table + "\n")
    plot_curves(
        load_json(out / "curves.json", {}),
        out / "curves.png",
        f"NQ-open oracle dev (first {args.dev_limit}), SmolLM2-135M, setting {setting}",
    )
    return done, results


def finished_results(setting: str, args, systems: list[str]) -> tuple[list[str], list[EvalResult]]:
    """The names and results of ``systems`` with a saved test evaluation, in the canonical
    order."""
    folder = args.out / setting / "eval"
    ordered = [s for s in (*SYSTEMS, *ZERO_SHOT) if s in systems]
    done = [s for s in ordered if (folder / f"{s}.json").is_file()]
    return done, [EvalResult.load(folder / f"{s}.json") for s in done]


def curve_table(curves: dict[str, list[dict]]) -> str:
    """Dev F1 (%) by QA step, one row per system."""
    steps = sorted({p["step"] for points in curves.values() for p in points})
    lines = [
        "| system | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for system in [s for s in (*SYSTEMS, *ZERO_SHOT) if s in curves]:
        f1 = {p["step"]: f"{100 * p['f1']:.1f}" for p in curves[system]}
        lines.append(f"| {system} | " + " | ".join(f1.get(s, "") for s in steps) + " |")
    return "\n".join(lines)


def time_table(times: dict[str, dict], walls: dict[str, float]) -> str:
    """Minutes per system: training CPU time per stage, training wall time, evaluation wall
    time (dev curve and test; "-" where it was not recorded)."""
    lines = [
        "| system | stage 1 CPU min | stage 2 CPU min | training wall min "
        "| dev-curve evals wall min | test eval wall min |",
        "|---|---|---|---|---|---|",
    ]

    def minutes(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds / 60:.1f}"

    for system in (*SYSTEMS, *ZERO_SHOT):
        stages = times.get(system)
        if not stages and f"eval:{system}" not in walls:
            continue
        cpu = [(stages or {}).get(k, {}).get("train_cpu_seconds") for k in ("stage1", "stage2")]
        wall = sum(v["train_seconds"] for v in stages.values()) if stages else None
        cells = [*map(minutes, cpu), minutes(wall)]
        cells += [minutes(walls.get(f"dev:{system}")), minutes(walls.get(f"eval:{system}"))]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(args, page: Path) -> None:
    """Write what has finished into ``page`` between the ``fair`` markers (trains nothing)."""
    parts = [
        f"Produced by `{args.command}` (resumes where it stopped; `--report {page}` "
        "rewrites this section from what has finished). Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}."
    ]
    for setting in args.settings:
        out = args.out / setting
        parts.append(f"### Setting `{setting}`: {DESCRIPTION[setting]}")
        done, results = finished_results(setting, args, args.systems)
        missing = [s for s in args.systems if s not in done]
        if results:
            parts.append(
                f"NQ-open oracle test split, first {results[0].overall['n']} items; scores in %."
            )
            parts.append(markdown_tables(results))
            by_system = dict(zip(done, results, strict=True))
            references = [by_system[s] for s in DIFFERENCE_REFERENCES if s in by_system]
            if references:
                parts.append(difference_legend(references))
                parts.append(difference_table(results, references))
        if missing:
            parts.append(f"Not finished yet: {', '.join(missing)}.")
        curves = load_json(out / "curves.json", {})
        if curves:
            plot = page.parent / "results" / f"fair_{setting}.png"
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot_curves(curves, plot, f"NQ-open dev (first {args.dev_limit}), {setting}")
            parts.append(
                f"Learning curves: dev F1 (first {args.dev_limit} dev items) every "
                f"{args.curve_every} QA steps, after stage 1. Right: against the CPU time "
                "of the training steps (both stages, all threads; about twice the wall time "
                "on 2 threads)."
            )
            parts.append(f"![learning curves, {setting}](results/{plot.name})")
            parts.append(curve_table(curves))
        times = load_json(out / "train_seconds.json", {})
        walls = load_json(out / "wall_seconds.json", {})
        if times or walls:
            parts.append("Time per system (this machine, all sessions together):")
            parts.append(time_table(times, walls))
            cpu = sum(v["train_cpu_seconds"] for t in times.values() for v in t.values())
            wall = sum(v["train_seconds"] for t in times.values() for v in t.values())
            wall += sum(walls.values())
            parts.append(
                f"Total: {cpu / 3600:.1f} CPU hours of training; {wall / 3600:.1f} hours "
                "of wall time for training and the recorded evaluations."
            )
        parts.append(f"Every prediction: `benchmarks/fair/results/{setting}/eval/*.json`.")
    replace_section(page, "fair", "\n\n".join(parts))
    print(f"written {page}")


def command_line(args, **overrides: list[str]) -> str:
    """The benchmark command for ``args``, with ``overrides`` (e.g. ``systems=[...]``)."""
    return _command_line("benchmarks/fair/run.py", args, ("out", "report", "command"), **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fair" / "results")
    parser.add_argument("--settings", default="r4,r16")
    parser.add_argument(
        "--systems",
        default=",".join(RUN_ORDER),
        help="comma-separated, trained in this order (the table keeps the canonical order)",
    )
    parser.add_argument("--stage1-steps", type=int, default=100)
    parser.add_argument("--stage2-steps", type=int, default=200)
    parser.add_argument("--curve-every", type=int, default=50)
    parser.add_argument("--dev-limit", type=int, default=50)
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument(
        "--report",
        type=Path,
        metavar="PAGE",
        help="train nothing: write what has finished into PAGE (e.g. docs/results.md) "
        "between its <!-- begin fair --> / <!-- end fair --> markers",
    )
    args = parser.parse_args()
    args.settings = [s for s in args.settings.split(",") if s]
    if unknown := [s for s in args.settings if s not in SETTINGS]:
        parser.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    args.systems = list(dict.fromkeys(s for s in args.systems.split(",") if s))
    unknown = [s for s in args.systems if s not in SYSTEMS and s not in ZERO_SHOT]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {[*SYSTEMS, *ZERO_SHOT]}")
    args.command = command_line(args)
    if args.report:
        write_report(args, args.report)
        return
    summary_path = args.out / "summary.json"
    summary = load_json(summary_path, {"settings": {}})
    summary["machine"] = {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    for setting in args.settings:
        done, results = run_setting(setting, args)
        summary["settings"][setting] = {
            # The command that reproduces every row (a run resumes and skips finished systems).
            "command": command_line(args, settings=[setting], systems=done),
            "table": (args.out / setting / "table.md").read_text(),
            "overall": {r.method: r.overall for r in results},
            "eval_wall_seconds": load_json(args.out / setting / "wall_seconds.json", {}),
            "train_seconds": load_json(args.out / setting / "train_seconds.json", {}),
        }
        write_json(summary_path, summary)
        print((args.out / setting / "table.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
