"""Contexts as building blocks against compressing the whole text (issue 20), on the embedded
SmolLM2-135M with one compressor, on the same items, with paired 95% bootstrap intervals:

- ``--part composition`` (HotpotQA test, the gold paragraphs among ``--distractors``
  distractors): the joined context compressed as one text, against its paragraphs compressed
  one by one (each distinct paragraph once) and composed (``Compressor.compose``); plus the
  reuse speed-up: building a question's context by composing already-compressed paragraphs
  against compressing the joined text again (medians over ``--timing-items`` items).
- ``--part extension`` (SQuAD test, SAC only): each passage compressed whole, against its
  first half compressed and then extended by the second half, with an open tail
  (``keep_tail=True``: must equal the whole) and with a closed one (new chunks).

Resumable: finished evaluations are reused. Writes ``<out>/<part>-<name>.md`` and the JSONs.

    python benchmarks/building_blocks/run.py --part composition --name sac \\
        --model benchmarks/recipe/results/train/sac-all_shared/compressor
    python benchmarks/building_blocks/run.py --part composition --name full --model full_context
    python benchmarks/building_blocks/run.py --part extension --name sac \\
        --model benchmarks/recipe/results/train/sac-all_shared/compressor
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import ctxcompress as cc
from ctxcompress.data import load_qa
from ctxcompress.evaluation import EvalResult, difference_table, evaluate, markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the benchmarks package
from benchmarks._common import write_json


def get_compressor(spec: str) -> cc.Compressor:
    """A saved compressor folder, or a method name for a zero-shot hard baseline on SmolLM2."""
    if Path(spec).is_dir():
        return cc.load_compressor(spec)
    return cc.build_compressor(spec, cc.load_base_model("embedded"))


def reuse_timing(comp: cc.Compressor, examples: list, items: int) -> dict[str, float]:
    """Median seconds to get one question's context: compressing the joined text vs
    composing its paragraphs' stored contexts (compressed beforehand, not timed)."""
    joint, composed = [], []
    with torch.inference_mode():
        for e in examples[:items]:
            stored = comp.compress([p for p in e.context.split("\n\n") if p.strip()])
            start = time.perf_counter()
            comp.compress(e.context)
            joint.append(time.perf_counter() - start)
            start = time.perf_counter()
            comp.compose(stored)
            composed.append(time.perf_counter() - start)
    j, c = statistics.median(joint), statistics.median(composed)
    return {"joint_compress_s": j, "compose_s": c, "speedup": j / c, "items": len(joint)}


def extended(comp: cc.Compressor, open_tail: bool) -> Callable[[Sequence[str]], list]:
    """Contexts built as: the first half of the tokens compressed, then extended by the rest."""

    def build(texts: Sequence[str]) -> list:
        out = []
        for text in texts:
            ids = comp.context_ids(text)
            half = len(ids) // 2
            (head,) = comp.compress_ids([ids[:half]], keep_tail=open_tail)
            out.append(comp.extend_ids(head, ids[half:]))
        return out

    return build


def run_modes(comp, examples, out: Path, part: str, name: str, modes: dict) -> dict:
    results = {}
    for mode, options in modes.items():
        path = out / f"{part}-{name}-{mode}.json"
        if path.is_file():
            results[mode] = EvalResult.load(path)
            continue
        results[mode] = evaluate(comp, examples, label=f"{name} ({mode})", **options)
        results[mode].save(path)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("composition", "extension"), required=True)
    parser.add_argument("--model", required=True, help="a saved compressor folder or a method")
    parser.add_argument("--name", default=None, help="row prefix (default: the method)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/building_blocks/results"))
    parser.add_argument("--limit", type=int, default=None, help="items (100 / 200 by part)")
    parser.add_argument("--distractors", type=int, default=4)
    parser.add_argument("--timing-items", type=int, default=20)
    args = parser.parse_args()
    comp = get_compressor(args.model)
    name = args.name or comp.method
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "composition":
        examples = load_qa(
            "hotpotqa:test", limit=args.limit or 100, num_distractors=args.distractors
        )
        modes = {"joint": {}, "composed": {"compose_passages": True}}
    else:
        examples = load_qa("squad:test", limit=args.limit or 200)
        modes = {
            "whole": {},
            "open_tail": {"build_contexts": extended(comp, open_tail=True)},
            "closed_tail": {"build_contexts": extended(comp, open_tail=False)},
        }
    results = run_modes(comp, examples, args.out, args.part, name, modes)
    first, *others = results.values()
    text = markdown_table(list(results.values())) + "\n\n"
    text += difference_table(others, [first], "f1") + "\n"
    if args.part == "composition":
        timing_path = args.out / f"composition-{name}-reuse.json"
        if not timing_path.is_file():
            write_json(timing_path, reuse_timing(comp, examples, args.timing_items))
        timing = json.loads(timing_path.read_text())
        passages = results["composed"].info["passages"]
        text += (
            f"\nParagraphs: {passages['used']} used, {passages['compressed']} compressed (the "
            f"rest reused). Building one question's context: compressing the joined text "
            f"{timing['joint_compress_s'] * 1000:.0f} ms, composing its stored paragraphs "
            f"{timing['compose_s'] * 1000:.1f} ms ({timing['speedup']:.0f}x; medians over "
            f"{timing['items']} items).\n"
        )
    (args.out / f"{args.part}-{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
