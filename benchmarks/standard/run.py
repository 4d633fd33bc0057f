"""Training-free baselines on the standard QA data: SQuAD, HotpotQA and RULER-style contexts.

On SmolLM2-135M-Instruct, every setting evaluates the same items (chat layout of
``ctxcompress.prompts.chat_prompt_options``, greedy, 32 new tokens, stop at a newline) with:

* ours, zero-shot: ``full_context`` (the upper bound), ``no_context`` (the floor) and
  ``truncation`` at 4x and 16x (the head of the context, prompt prefix kept whole);
* NVIDIA kvpress's presses KVzip, Expected Attention, SnapKV and StreamingLLM at the setting's
  ratio, run by ``benchmarks/peers/kvpress_run.py`` inside ``.venv-kvpress`` (``bash
  benchmarks/peers/setup_kvpress.sh``; skipped with a note when that venv is missing) with
  ``--budget matched``: per item, as many KV entries as our truncation keeps.

Settings (docs/evaluation.md describes the data):

* ``squad_r4``: ``squad:test`` (answerable SQuAD v2 dev questions of the 10 test articles;
  100 drawn with seed 0), single paragraphs, ratio 4;
* ``hotpotqa_r16``: ``hotpotqa:test`` (distractor setting, the 10 paragraphs; 100 drawn with
  seed 0), ratio 16;
* ``ruler_qa_2k_r16`` / ``ruler_qa_4k_r16``: ``ruler:qa_squad`` at 2k / 4k tokens, ratio 16;
* ``ruler_niah_2k_r16`` / ``ruler_niah_4k_r16``: ``ruler:niah_single`` at 2k / 4k, ratio 16.

Scores: EM / token F1 (max over golds), RULER's string match on the ruler settings, each by
answer / gold-paragraph / needle depth, and every system minus truncation at the setting's
ratio with paired 95% intervals. Everything is saved under ``--out`` (every prediction, no
context text); rerun the same command to resume (finished systems are reused; kvpress resumes
per press). ``--report docs/results.md`` rewrites that page's ``standard`` section from what
has finished, evaluating nothing.

    python benchmarks/standard/run.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import ctxcompress as cc
from ctxcompress.data import load_qa
from ctxcompress.data.records import QAExample
from ctxcompress.evaluation import (
    EvalResult,
    Prediction,
    difference_legend,
    difference_table,
    evaluate,
    markdown_table,
    metrics,
    replace_section,
)
from ctxcompress.evaluation.report import LABELS, depth_key, depth_table, plot_quality_vs_depth
from ctxcompress.prompts import chat_prompt_options

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._common import add_seconds, load_json, write_json  # noqa: E402
from benchmarks._common import command_line as _command_line  # noqa: E402

SPEC = yaml.safe_load((ROOT / "configs" / "benchmarks" / "standard.yaml").read_text())
SETTINGS: dict[str, dict[str, Any]] = SPEC["settings"]
OURS = tuple(SPEC["ours"])
PRESSES = tuple(SPEC["presses"])
KVPRESS_PYTHON = ROOT / ".venv-kvpress" / "bin" / "python"
KVPRESS_SCRIPT = ROOT / "benchmarks" / "peers" / "kvpress_run.py"


def examples_of(setting: str, limit: int | None) -> list[QAExample]:
    spec = SETTINGS[setting]
    return load_qa(spec["data"], limit=limit or spec["limit"], seed=spec.get("seed"))


def label(system: str, setting: str) -> str:
    """A system's row name: ours as named, a kvpress press with the setting's ratio."""
    if system.startswith("kvpress:"):
        return f"{system}@{SETTINGS[setting]['ratio']}x"
    return system


def reference_name(setting: str) -> str:
    """The row every system is compared with, item by item: truncation at the ratio."""
    return f"truncation@{SETTINGS[setting]['ratio']}x"


# ----------------------------------------------------------------------------- ours
def zero_shot(system: str) -> cc.Compressor:
    base = cc.load_base_model()
    options = chat_prompt_options(base.tokenizer)
    method, _, ratio = system.partition("@")
    if ratio:
        options["ratio"] = int(ratio.rstrip("x"))
    return cc.build_compressor(method, base, **options)


def run_ours(setting: str, examples: list[QAExample], args, out: Path) -> None:
    for system in args.systems:
        path = out / "eval" / f"{system}.json"
        if system not in OURS or path.is_file():
            continue
        comp = zero_shot(system)
        start = time.perf_counter()
        result = evaluate(
            comp, examples, max_new_tokens=32, batch_size=args.batch_size, label=system
        )
        add_seconds(out / "wall_seconds.json", f"eval:{system}", time.perf_counter() - start)
        result.info.update(setting=setting, data=SETTINGS[setting]["data"])
        result.save(path)
        del comp


# ----------------------------------------------------------------------------- kvpress
def run_kvpress(setting: str, examples: list[QAExample], args, out: Path) -> None:
    presses = [s.split(":", 1)[1] for s in args.systems if s.startswith("kvpress:")]
    if not presses:
        return
    if not KVPRESS_PYTHON.is_file():
        print(
            f"[standard] {setting}: kvpress skipped: {KVPRESS_PYTHON} is missing; create it with "
            "`bash benchmarks/peers/setup_kvpress.sh`",
            flush=True,
        )
        return
    # The items (with their contexts) go to a git-ignored file: data is read, never committed.
    items = out / "cache" / "examples.jsonl"
    items.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": e.id, "context": e.context, "question": e.question, "answers": list(e.answers)}
        for e in examples
    ]
    items.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    command = [
        str(KVPRESS_PYTHON),
        str(KVPRESS_SCRIPT),
        "--examples",
        str(items),
        "--ratios",
        str(SETTINGS[setting]["ratio"]),
        "--presses",
        ",".join(presses),
        "--budget",
        "matched",
        "--threads",
        str(args.kvpress_threads),
        "--out",
        str(out / "kvpress.json"),
        "--resume",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    add_seconds(out / "wall_seconds.json", "kvpress", time.perf_counter() - start)


def kvpress_results(setting: str, examples: list[QAExample], out: Path) -> list[EvalResult]:
    """kvpress's predictions as :class:`EvalResult` s, scored with our metrics (string match
    too) and carrying each example's ``meta`` so depth tables cover them. L and C count the
    whole prefill (chat prefix + context), as our zero-shot rows do; C is the KV entries kept
    over the entries per token (head-wise presses keep different tokens per head)."""
    data = load_json(out / "kvpress.json", None)
    if not data:
        return []
    by_id = {e.id: e for e in examples}
    results = []
    for key, rows in sorted(data["runs"].items()):
        press, r = key.split("@")
        if press == "none" or any(row["id"] not in by_id for row in rows):
            continue
        predictions = []
        for row in rows:
            e = by_id[row["id"]]
            scores = metrics.qa_scores(row["answer"], row["golds"])
            if "references" in e.meta:
                refs, mode = e.meta["references"], e.meta.get("match", "all")
                scores["string_match"] = metrics.string_match(row["answer"], refs, mode)
            per_token = row["kv_entries_full"] / row["prefill_tokens"]
            kept = row["kv_entries_kept"]
            predictions.append(
                Prediction(
                    id=row["id"],
                    question=row["question"],
                    prediction=row["answer"],
                    golds=list(row["golds"]),
                    scores=scores,
                    compressed_length=round(kept / per_token) if kept is not None else 0,
                    original_length=row["prefill_tokens"],
                    meta=dict(e.meta),
                )
            )
        overall = {
            k: sum(p.scores[k] for p in predictions) / len(predictions)
            for k in predictions[0].scores
        }
        overall.update(
            n=len(predictions),
            original_length=sum(p.original_length for p in predictions) / len(predictions),
            compressed_length=sum(p.compressed_length for p in predictions) / len(predictions),
        )
        ratio = overall["original_length"] / max(1.0, overall["compressed_length"])
        results.append(
            EvalResult(
                f"kvpress:{press}@{r}x",
                ratio,
                "qa",
                predictions,
                overall,
                info={"setting": setting, "source": "kvpress.json", "budget": "matched"},
            )
        )
    return results


# ----------------------------------------------------------------------------- reports
def finished(setting: str, args) -> list[EvalResult]:
    out = args.out / setting
    ours = [out / "eval" / f"{s}.json" for s in OURS]
    results = [EvalResult.load(p) for p in ours if p.is_file()]
    if results:
        examples = examples_of(setting, results[0].overall["n"])
        results += kvpress_results(setting, examples, out)
    return results


def setting_report(setting: str, args, page: Path) -> list[str]:
    spec, results = SETTINGS[setting], finished(setting, args)
    parts = [f"### `{setting}`: `{spec['data']}`, ratio {spec['ratio']}"]
    if not results:
        return [*parts, "Not run yet."]
    n = results[0].overall["n"]
    drawn = f", drawn with seed {spec['seed']}" if "seed" in spec else ""
    parts.append(f"First {n} items{drawn}; scores in %.")
    parts.append(markdown_table(results))
    reference = [r for r in results if r.method == reference_name(setting)]
    metric = "string_match" if all("string_match" in r.overall for r in results) else "f1"
    if reference:
        parts.append(difference_legend(reference, metric))
        parts.append(difference_table(results, reference, metric))
    if key := depth_key(results):
        name = LABELS.get(metric, metric)
        parts.append(f"{name} (%) by `{key}` (where the answer is; n per bin):")
        parts.append(depth_table(results, key, metric))
        plot = page.parent / "results" / f"standard_{setting}_depth.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_quality_vs_depth(
            results, plot, key=key, metric=metric, title=f"{setting}, SmolLM2-135M"
        )
        parts.append(f"![{setting} by depth](results/{plot.name})")
    done = {r.method for r in results}
    missing = [s for s in args.systems if label(s, setting) not in done]
    if missing:
        parts.append(f"Not finished yet: {', '.join(missing)}.")
    return parts


def write_report(args, page: Path) -> None:
    parts = [
        f"Produced by `{command_line(args)}` (resumes where it stopped; `--report {page}` "
        f"rewrites this section from what has finished). Machine: {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}. Every prediction: "
        "`benchmarks/standard/results/<setting>/eval/*.json` and `.../kvpress.json`."
    ]
    for setting in args.settings:
        parts += setting_report(setting, args, page)
    replace_section(page, "standard", "\n\n".join(parts))
    print(f"written {page}")


def command_line(args) -> str:
    exclude = ["out", "report", "kvpress_threads", "batch_size"]
    if args.limit is None:
        exclude.append("limit")
    return _command_line("benchmarks/standard/run.py", args, exclude)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "standard" / "results")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    default_systems = [*OURS, *(f"kvpress:{p}" for p in PRESSES)]
    parser.add_argument("--systems", default=",".join(default_systems))
    parser.add_argument(
        "--limit", type=int, default=None, help="items per setting (default: its own)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kvpress-threads", type=int, default=2)
    parser.add_argument("--report", type=Path, metavar="PAGE")
    args = parser.parse_args()
    args.settings = args.settings.split(",")
    args.systems = args.systems.split(",")
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {','.join(SETTINGS)}")
    known = {*OURS, *(f"kvpress:{p}" for p in PRESSES), "kvpress:none"}
    unknown = [s for s in args.systems if s not in known]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {','.join(sorted(known))}")
    if args.report:
        write_report(args, args.report)
        return
    for setting in args.settings:
        out = args.out / setting
        examples = examples_of(setting, args.limit)
        run_ours(setting, examples, args, out)
        run_kvpress(setting, examples, args, out)
        results = finished(setting, args)
        write_json(
            out / "summary.json", {"command": command_line(args), "table": markdown_table(results)}
        )
        print(markdown_table(results), flush=True)


if __name__ == "__main__":
    main()
