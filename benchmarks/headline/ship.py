"""Ship a trained headline compressor as package data: ``embedded:<name>``.

    python benchmarks/headline/ship.py --setting sac_4x --system sac --name sac-4x

Takes the stage-2 compressor that ``benchmarks/headline/run.py`` trained, stores its learned
tensors (LoRA adapter and embeddings) in bfloat16 (half the bytes; a few MB), re-evaluates
*the stored weights* on every test set of the setting, and writes into
``src/ctxcompress/compressors/<name>/``:

* the compressor folder (``save_pretrained`` layout);
* ``MODEL_CARD.md``: data, steps, recipe, the scores of the shipped weights with paired 95%
  intervals against trained truncation, trained full context and the standard zero-shot and
  kvpress rows on the same items, the commands behind them, the command that retrains it,
  and its limits;
* ``demo.json``: the items ``make demo`` measures it on, with the scores it must print;
* ``manifest.json``: every file's SHA-256, checked at load (``ctxcompress.shipped``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._trained import standard_references, to_bfloat16  # noqa: E402
from benchmarks.headline.run import BENCHMARK  # noqa: E402

import ctxcompress as cc  # noqa: E402
from ctxcompress import shipped  # noqa: E402
from ctxcompress.demo import pretrained  # noqa: E402
from ctxcompress.evaluation import (  # noqa: E402
    EvalResult,
    difference_table,
    evaluate,
    markdown_table,
)
from ctxcompress.evaluation.significance import paired_difference  # noqa: E402

PACKAGE_ROOT = ROOT / "src" / "ctxcompress" / "compressors"


def metric_of(results: list[EvalResult]) -> str:
    return "string_match" if all("string_match" in r.overall for r in results) else "f1"


def trained_steps(folder: Path) -> int:
    """The last step a training run logged (its ``metrics.jsonl``), 0 when it has none."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((int(line.get("step", 0)) for line in lines), default=0)


def standing(
    source: str, shipped_row: EvalResult, references: list[EvalResult], metric: str
) -> str:
    """One line per test set: the shipped weights minus each reference on the same items,
    with paired 95% intervals, naming the test set and the metric compared."""
    parts = []
    for reference in references:
        difference = paired_difference(shipped_row, reference, metric)
        word = (
            "above" if difference.low > 0 else "below" if difference.high < 0 else "within noise of"
        )
        parts.append(f"{word} `{reference.method}` ({difference.percent(signed=True)})")
    return (
        f"- `{source}` ({shipped_row.overall['n']} items, {metric}): `{shipped_row.method}` is "
        + "; ".join(parts)
        + "."
    )


def model_card(
    name: str,
    args,
    comp,
    tests: dict[str, list[EvalResult]],
    training_free: dict[str, list[EvalResult]],
) -> str:
    """``tests``: per test the shipped row first, then the others; ``training_free``: the
    standard zero-shot and kvpress rows among them."""
    setting = BENCHMARK.settings[args.setting]
    system = BENCHMARK.system_spec(args.system, args.setting)
    runs = args.out / args.setting / "train" / args.system
    steps = {f"stage{k}": trained_steps(runs / f"stage{k}") for k in (1, 2)}
    command = (
        f"python benchmarks/headline/run.py --settings {args.setting} --stage2-steps "
        f"{steps['stage2']}"
    )
    lines = [
        f"# `embedded:{name}`: {comp.method.upper()} at {comp.config.ratio}x on "
        "SmolLM2-135M-Instruct",
        "",
        "```python",
        "import ctxcompress as cc",
        "",
        f'comp = cc.load_compressor("embedded:{name}")',
        'ctx = comp.compress("a long document ...")',
        'comp.generate(ctx, ["a question?"], max_new_tokens=32)',
        "```",
        "",
        "## Training",
        "",
        f"- Setting `{args.setting}` of `configs/benchmarks/headline.yaml`: "
        f"{setting['description']}.",
        f"- Stage 1: {steps['stage1']} steps of continuation on "
        + ", ".join(f"`{t['source']}`" for t in BENCHMARK.spec["stage1_texts"])
        + f"; stage 2: {steps['stage2']} QA steps "
        + f"(batch {BENCHMARK.spec['loop']['batch_size']}) on "
        + ", ".join(f"`{d['source']}` (weight {d.get('weight', 1.0)})" for d in setting["train"])
        + ".",
        f"- Recipe: method options `{json.dumps(system['options'])}`, loop overrides "
        f"`{json.dumps(system.get('train', {}))}`, "
        + (
            f"distillation from `{system['distill']}`."
            if system.get("distill")
            else "no distillation."
        ),
        "- Stored in bfloat16 (learned tensors only; the base model is the embedded one). The "
        "scores below are of these stored weights.",
        f"- Retrain (resumable; the same command continues): `{command}`; ship: "
        f"`python benchmarks/headline/ship.py --setting {args.setting} --system {args.system} "
        f"--name {name} --demo-limit {args.demo_limit}`.",
        "",
        "## Scores (test sets; paired 95% bootstrap intervals on the same items)",
        "",
    ]
    standings = []
    for test, results in tests.items():
        spec = setting["tests"][test]
        metric = metric_of(results)
        references = [
            r for r in results[1:] if r.method.startswith(("trained_truncation", "trained_full"))
        ]
        lines += [f"### `{spec['source']}` ({results[0].overall['n']} items)", ""]
        lines += [markdown_table(results), ""]
        if references:
            lines += [difference_table(results, references, metric), ""]
        if free := training_free[test]:
            references = [*references, max(free, key=lambda r: r.overall[metric])]
        standings.append(standing(spec["source"], results[0], references, metric))
    lines += ["## Where it stands", "", *standings]
    lines += [
        "",
        "The rows `trained_*` come from the retrain command above (the same data, steps and "
        "loop); the zero-shot and `kvpress:*` rows from `python benchmarks/standard/run.py` "
        "on the same items; the issue's targets with their verdicts are in docs/results.md "
        "(the headline section).",
        "",
        "## Limits",
        "",
        "- Trained on a 2-core CPU budget, far below the papers' (two 20k-step stages on GPUs); "
        "read the scores against the references beside them, not as the method's ceiling.",
        "- English QA contexts like the training data; one base model (the embedded "
        "SmolLM2-135M-Instruct: the fingerprint is checked at load).",
        f"- Ratio {comp.config.ratio}x as trained; other ratios are untested for this compressor.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", required=True, choices=list(BENCHMARK.settings))
    parser.add_argument("--system", required=True)
    parser.add_argument("--name", required=True, help="the shipped name, e.g. sac-4x")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "headline" / "results")
    parser.add_argument("--demo-limit", type=int, default=30, help="items make demo measures")
    parser.add_argument("--package-root", type=Path, default=PACKAGE_ROOT)
    parser.add_argument("--eval-limit", type=int, default=None, help="default: the spec's")
    args = parser.parse_args()
    out = args.out / args.setting
    source = out / "train" / args.system / "stage2" / "compressor"
    if not (source / "ctxcompress.json").is_file():
        parser.error(f"{source} is not a trained compressor: run {BENCHMARK.script} first")
    target = args.package_root / args.name
    staging = target.with_name(f".{args.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    (staging / "README.md").unlink(missing_ok=True)  # MODEL_CARD.md replaces it
    to_bfloat16(staging)
    comp = cc.load_compressor(staging)
    tests: dict[str, list[EvalResult]] = {}
    training_free: dict[str, list[EvalResult]] = {}
    base_args = argparse.Namespace(eval_limit=args.eval_limit)
    for test in BENCHMARK.settings[args.setting]["tests"]:
        examples = BENCHMARK.test_examples(args.setting, test, base_args)
        result = evaluate(
            comp, examples, max_new_tokens=32, batch_size=16, label=f"{args.name} (shipped)"
        )
        folder = BENCHMARK.eval_folder(args.setting, test, out)
        others = [  # the float32 weights before storage last, for comparison
            EvalResult.load(folder / f"{s}.json")
            for s in ("trained_truncation", "trained_full", args.system)
            if (folder / f"{s}.json").is_file()
        ]
        spec = BENCHMARK.settings[args.setting]["tests"][test]
        training_free[test] = standard_references(spec.get("standard"), [result])
        tests[test] = [result, *others, *training_free[test]]
    del comp
    (staging / "MODEL_CARD.md").write_text(
        model_card(args.name, args, cc.load_compressor(staging), tests, training_free)
    )
    first = next(iter(BENCHMARK.settings[args.setting]["tests"].values()))
    demo = {
        "data": first["source"],
        "limit": args.demo_limit,
        "seed": first.get("seed"),
        "options": first.get("options", {}),
        "metric": metric_of(next(iter(tests.values()))),
        "max_new_tokens": 32,
    }
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    (target / pretrained.DEMO_FILE).write_text(json.dumps(demo, indent=2) + "\n")
    shipped.write_manifest(target)
    # The demo's own numbers, from the code make demo runs, on the shipped files.
    shipped_comp = cc.load_compressor(target)
    name = f"embedded:{args.name}"
    results, _ = pretrained.rows(name, demo, cc.load_base_model(), {}, comp=shipped_comp)
    demo["scores"] = {r.method: r.overall[demo["metric"]] for r in results}
    (target / pretrained.DEMO_FILE).write_text(json.dumps(demo, indent=2) + "\n")
    shipped.write_manifest(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"shipped embedded:{args.name} into {target} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
