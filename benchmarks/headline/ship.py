"""Ship a trained compressor of a benchmark as package data: ``embedded:<name>``.

    python benchmarks/headline/ship.py --setting sac_4x --system sac --name sac-4x
    python benchmarks/headline/ship.py --benchmark levers --setting long_4x \
        --system trained_truncation_decoder --name truncation-4x
    python benchmarks/headline/ship.py --refresh-demo sac-4x --demo-needles ruler:niah_single:2k

Takes the stage-2 compressor that the benchmark's driver (``benchmarks/headline/run.py`` by
default, or ``benchmarks/levers/run.py``) trained, stores its learned
tensors (LoRA adapter and embeddings) in bfloat16 (half the bytes; a few MB), re-evaluates
*the stored weights* on every test set of the setting, and writes into
``src/ctxcompress/compressors/<name>/``:

* the compressor folder (``save_pretrained`` layout);
* ``MODEL_CARD.md``: data, steps, recipe, the scores of the shipped weights with paired 95%
  intervals against the setting's trained references (its ``trained_*`` systems: truncation
  and full context at the same budget) and the standard zero-shot and
  kvpress rows on the same items, the commands behind them, the command that retrains it,
  and its limits;
* ``demo.json``: the items ``make demo`` measures it on (and needle items:
  ``--demo-needles``), the shipped references it runs beside it (``--demo-references``: e.g.
  trained truncation at the same budget), with the scores it must print (``--refresh-demo``
  measures them again for a compressor already shipped, after the demo changed);
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
from benchmarks.headline import run as headline  # noqa: E402
from benchmarks.levers import run as levers  # noqa: E402

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
BENCHMARKS = {"headline": headline.BENCHMARK, "levers": levers.BENCHMARK}
"""The trained benchmarks a compressor may be shipped from (``--benchmark``)."""
PAGES = {
    "headline": "docs/results.md (the headline section)",
    "levers": "docs/training.md (the levers section)",
}
REFERENCE_PREFIX = "trained_"
"""A setting's systems named so are the card's trained references (truncation, full context)."""


def card_references(benchmark, setting: str, system: str) -> list[str]:
    """The setting's trained references for ``system``'s card: its ``trained_*`` systems."""
    own = benchmark.own_systems(setting)
    return [s for s in own if s.startswith(REFERENCE_PREFIX) and s != system]


def metric_of(results: list[EvalResult]) -> str:
    return "string_match" if all("string_match" in r.overall for r in results) else "f1"


def trained_steps(folder: Path) -> int:
    """The last step a training run logged (its ``metrics.jsonl``), 0 when it has none."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((int(line.get("step", 0)) for line in lines), default=0)


def title(comp) -> str:
    """What a card calls the compressor: the method, or for a prompt-tuned model the context
    it reads (trained truncation, trained full context)."""
    context = getattr(comp.config, "context", None)
    if comp.method == "prompt_tuned" and context:
        return "trained full context" if context == "full" else f"trained {context}"
    return comp.method.upper()


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
    benchmark = BENCHMARKS[args.benchmark]
    setting = benchmark.settings[args.setting]
    system = benchmark.system_spec(args.system, args.setting)
    train = args.out / args.setting / "train"
    first = system.get("stage1_from", args.system)  # a shared stage 1 lives with its system
    steps = {
        "stage1": trained_steps(train / first / "stage1"),
        "stage2": trained_steps(train / args.system / "stage2"),
    }
    stage1_texts = system.get("stage1", {}).get("texts", benchmark.spec["stage1_texts"])
    command = (
        f"python {benchmark.script} --settings {args.setting} --systems {args.system} "
        f"--stage2-steps {steps['stage2']}"
    )
    ship = (
        f"python benchmarks/headline/ship.py --benchmark {args.benchmark} --setting "
        f"{args.setting} --system {args.system} --name {name} --demo-limit {args.demo_limit}"
        + (f" --demo-references {','.join(args.demo_references)}" if args.demo_references else "")
    )
    lines = [
        f"# `embedded:{name}`: {title(comp)} at {comp.config.ratio}x on SmolLM2-135M-Instruct",
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
        f"- Setting `{args.setting}` of `configs/benchmarks/{args.benchmark}.yaml`: "
        f"{setting['description']}.",
        f"- Stage 1: {steps['stage1']} steps of continuation on "
        + ", ".join(f"`{t['source']}`" for t in stage1_texts)
        + f"; stage 2: {steps['stage2']} QA steps "
        + f"(batch {benchmark.spec['loop']['batch_size']}) on "
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
        f"- Retrain (resumable; the same command continues): `{command}`; ship: `{ship}`.",
        "",
        "## Scores (test sets; paired 95% bootstrap intervals on the same items)",
        "",
    ]
    standings = []
    for test, results in tests.items():
        spec = setting["tests"][test]
        metric = metric_of(results)
        references = [  # the trained references and the version it replaces
            r
            for r in results[1:]
            if r.method.startswith(REFERENCE_PREFIX) or " version " in r.method
        ]
        lines += [f"### `{spec['source']}` ({results[0].overall['n']} items)", ""]
        lines += [markdown_table(results), ""]
        if references:
            lines += [difference_table(results, references, metric), ""]
        if free := training_free[test]:
            references = [*references, max(free, key=lambda r: r.overall[metric])]
        standings.append(standing(spec["source"], results[0], references, metric))
    lines += ["## Where it stands", "", *standings]
    history = shipped.history(args.package_root / f".{name}.staging")
    if history:
        lines += ["", "## Versions", ""]
        lines += [
            f"- version {v['version']}: {v['changed']}"
            + (f" (`{v['trained']}`)" if v.get("trained") else "")
            + f"; fingerprint `{v['fingerprint']}`"
            for v in history
        ]
        lines += [
            "",
            "A context saved with an earlier version is refused by this one, naming the "
            "version that made it: compress the text again.",
        ]
    lines += [
        "",
        "The rows `trained_*` come from the retrain command above (the same data, steps and "
        "loop); the zero-shot and `kvpress:*` rows from `python benchmarks/standard/run.py` "
        f"on the same items; the targets with their verdicts are in {PAGES[args.benchmark]}.",
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
    parser.add_argument("--benchmark", choices=list(BENCHMARKS), default="headline")
    parser.add_argument("--setting")
    parser.add_argument("--system")
    parser.add_argument("--name", help="the shipped name, e.g. sac-4x")
    parser.add_argument("--out", type=Path, help="default: the benchmark's results folder")
    parser.add_argument("--demo-limit", type=int, default=30, help="items make demo measures")
    parser.add_argument(
        "--demo-references",
        default="",
        help="comma-separated shipped compressors (embedded:<name>, shipped first) that make "
        "demo runs beside this one, e.g. trained truncation at the same budget",
    )
    parser.add_argument(
        "--demo-needles",
        default=None,
        metavar="DATA",
        help="needle items make demo runs beside the QA items, e.g. ruler:niah_single:2k",
    )
    parser.add_argument("--demo-needle-limit", type=int, default=5)
    parser.add_argument(
        "--refresh-demo",
        metavar="NAME",
        help="measure the demo of the shipped NAME again (its weights stay); nothing else",
    )
    parser.add_argument(
        "--what-changed",
        default="",
        help="replacing a shipped compressor: what the new version changes (its card and "
        "history.json keep every version)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace a shipped version it does not beat"
    )
    parser.add_argument("--package-root", type=Path, default=PACKAGE_ROOT)
    parser.add_argument("--eval-limit", type=int, default=None, help="default: the spec's")
    args = parser.parse_args()
    args.demo_references = [r for r in args.demo_references.split(",") if r]
    if args.refresh_demo:
        refresh_demo(args)
        return
    if missing := [f"--{k}" for k in ("setting", "system", "name") if not getattr(args, k)]:
        parser.error(f"{', '.join(missing)} required (or --refresh-demo NAME)")
    benchmark = BENCHMARKS[args.benchmark]
    if args.setting not in benchmark.settings:
        parser.error(f"unknown setting {args.setting!r}; known: {list(benchmark.settings)}")
    if args.system not in benchmark.own_systems(args.setting):
        parser.error(
            f"{args.system!r} is not a system of {args.setting}; its systems: "
            f"{list(benchmark.own_systems(args.setting))}"
        )
    args.out = args.out or ROOT / Path(benchmark.script).parent / "results"
    for reference in args.demo_references:
        folder = args.package_root / reference.removeprefix(shipped.PREFIX)
        if not reference.startswith(shipped.PREFIX) or not (folder / shipped.MANIFEST).is_file():
            parser.error(
                f"--demo-references {reference!r} is not a shipped compressor "
                f"(embedded:<name> in {args.package_root}): ship it first"
            )
    out = args.out / args.setting
    source = out / "train" / args.system / "stage2" / "compressor"
    if not (source / "ctxcompress.json").is_file():
        parser.error(f"{source} is not a trained compressor: run {benchmark.script} first")
    target = args.package_root / args.name
    old = cc.load_compressor(target) if (target / shipped.MANIFEST).is_file() else None
    if old is not None and not args.what_changed:
        parser.error(
            f"embedded:{args.name} is shipped: say what the new version changes (--what-changed)"
        )
    versions = shipped.history(target) if old is not None else []
    if old is not None and not versions:  # shipped before versions were recorded
        versions = [{"version": 1, "fingerprint": old.fingerprint, "changed": FIRST}]
    staging = target.with_name(f".{args.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    (staging / "README.md").unlink(missing_ok=True)  # MODEL_CARD.md replaces it
    to_bfloat16(staging)
    comp = cc.load_compressor(staging)
    tests: dict[str, list[EvalResult]] = {}
    training_free: dict[str, list[EvalResult]] = {}
    base_args = argparse.Namespace(eval_limit=args.eval_limit)
    for test in benchmark.settings[args.setting]["tests"]:
        examples = benchmark.test_examples(args.setting, test, base_args)
        limits = {"max_new_tokens": 32, "batch_size": 16}
        result = evaluate(comp, examples, label=f"{args.name} (shipped)", **limits)
        folder = benchmark.eval_folder(args.setting, test, out)
        others = [  # the float32 weights before storage last, for comparison
            EvalResult.load(folder / f"{s}.json")
            for s in (*card_references(benchmark, args.setting, args.system), args.system)
            if (folder / f"{s}.json").is_file()
        ]
        if old is not None:  # the version it replaces, on the same items
            label = f"{args.name} version {versions[-1]['version']}"
            others.insert(0, evaluate(old, examples, label=label, **limits))
        spec = benchmark.settings[args.setting]["tests"][test]
        training_free[test] = standard_references(spec.get("standard"), [result])
        tests[test] = [result, *others, *training_free[test]]
    if old is not None:
        replaces(args, tests, parser, staging)
    versions.append(
        {
            "version": versions[-1]["version"] + 1 if versions else 1,
            "fingerprint": comp.fingerprint,
            "changed": args.what_changed or FIRST,
            "trained": f"configs/benchmarks/{args.benchmark}.yaml {args.setting} {args.system}",
        }
    )
    (staging / shipped.HISTORY).write_text(json.dumps({"versions": versions}, indent=2) + "\n")
    del comp, old
    (staging / "MODEL_CARD.md").write_text(
        model_card(args.name, args, cc.load_compressor(staging), tests, training_free)
    )
    first = next(iter(benchmark.settings[args.setting]["tests"].values()))
    demo = {
        "data": first["source"],
        "limit": args.demo_limit,
        "seed": first.get("seed"),
        "options": first.get("options", {}),
        "metric": metric_of(next(iter(tests.values()))),
        "max_new_tokens": 32,
        "references": args.demo_references,
    }
    if args.demo_needles:
        demo["needles"] = needles(args)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    record_demo(target, demo)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"shipped embedded:{args.name} into {target} ({size / 2**20:.1f} MiB)")


FIRST = "the first shipped version"


def replaces(args, tests: dict[str, list[EvalResult]], parser, staging: Path) -> None:
    """A new version replaces the shipped one only where it beats it: on the setting's first
    test, the new weights minus the shipped ones on the same items, paired 95% interval
    above zero (``--force`` ships anyway, said on the card by its versions list)."""
    test, results = next(iter(tests.items()))
    metric = metric_of(results)
    difference = paired_difference(results[0], results[1], metric)
    print(f"new minus shipped on {test} ({metric}): {difference.percent(signed=True)}")
    if difference.low <= 0 and not args.force:
        shutil.rmtree(staging, ignore_errors=True)
        parser.error(
            f"the new weights do not beat embedded:{args.name} on {test}: "
            f"{difference.percent(signed=True)} {metric} (paired 95% interval); nothing "
            "shipped (--force ships anyway)"
        )


def needles(args) -> dict:
    """The demo's needle items (``--demo-needles``, ``--demo-needle-limit``)."""
    return {"data": args.demo_needles, "limit": args.demo_needle_limit, "max_new_tokens": 32}


def record_demo(folder: Path, demo: dict) -> None:
    """Write ``demo.json`` with the scores ``make demo`` must print — measured by the demo's
    own code on the shipped files (its items, and its needles when it has them) — and the
    manifest."""
    (folder / pretrained.DEMO_FILE).write_text(json.dumps(demo, indent=2) + "\n")
    shipped.write_manifest(folder)
    comp, base = cc.load_compressor(folder), cc.load_base_model()
    name = shipped.PREFIX + folder.name
    for spec, place in ((demo, demo), (pretrained.needle_spec(demo), demo.get("needles"))):
        if spec is None:
            continue
        results, _ = pretrained.rows(name, spec, base, {}, comp=comp)
        place["scores"] = {r.method: r.overall[spec["metric"]] for r in results}
    (folder / pretrained.DEMO_FILE).write_text(json.dumps(demo, indent=2) + "\n")
    shipped.write_manifest(folder)


def refresh_demo(args) -> None:
    """``--refresh-demo NAME``: measure an already shipped compressor's demo again with the
    demo's current code (after the demo changed what it runs), adding needle items when
    ``--demo-needles`` is given; its weights and card stay as shipped."""
    folder = args.package_root / args.refresh_demo
    demo_file = folder / pretrained.DEMO_FILE
    if not (folder / shipped.MANIFEST).is_file() or not demo_file.is_file():
        raise SystemExit(f"{folder} is not a shipped compressor with a {pretrained.DEMO_FILE}")
    demo = json.loads(demo_file.read_text())
    if args.demo_needles:
        demo["needles"] = needles(args)
    if args.demo_references:
        demo["references"] = args.demo_references
    record_demo(folder, demo)
    print(f"measured the demo of embedded:{args.refresh_demo} again: {demo_file}")


if __name__ == "__main__":
    main()
