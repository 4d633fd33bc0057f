"""Write the quality benchmark's tables (complete or partial) into docs/results.md.

python benchmarks/quality/report.py --results benchmarks/quality/results --out docs/results.md

Only the part between ``<!-- begin quality -->`` and ``<!-- end quality -->`` is rewritten;
the analysis around it is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctxcompress.evaluation import (
    EvalResult,
    difference_legend,
    difference_table,
    markdown_tables,
    plot_quality_vs_ratio,
    replace_section,
)

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["sac", "pic", "icae", "500x", "epl", "truncation", "full_context", "no_context"]
DESCRIPTION = {
    "r4": "ratio 4 on single gold passages (~150 tokens)",
    "r16": "ratio 16 on 5-passage contexts (gold among 4 distractors, ~620 tokens)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/quality/results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results.md")
    args = parser.parse_args()
    parts = []
    settings = [p.name for p in args.results.iterdir() if p.is_dir()]
    for setting in sorted(settings, key=lambda n: (len(n), n)):  # r4 before r16
        folder = args.results / setting
        files = {p.stem: p for p in (folder / "eval").glob("*.json")}
        by_method = {m: EvalResult.load(files[m]) for m in ORDER if m in files}
        results = list(by_method.values())
        missing = [m for m in ORDER if m not in files]
        parts.append(f"### Setting `{setting}`: {DESCRIPTION.get(setting, setting)}\n")
        if not results:
            parts.append("No finished evaluation yet.\n")
            continue
        parts.append(
            f"NQ-open oracle test split, first {results[0].overall['n']} items; scores in %.\n"
        )
        parts.append(markdown_tables(results) + "\n")
        if "truncation" in by_method and len(results) > 1:
            references = [by_method["truncation"]]
            parts.append(difference_legend(references) + "\n")
            parts.append(difference_table(results, references) + "\n")
        if missing:
            parts.append(f"Not finished yet: {', '.join(missing)} (rerun the command to resume).\n")
        plot = args.out.parent / "results" / f"quality_{setting}.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_quality_vs_ratio(
            [r for r in results if not r.method.startswith("no_context")],
            plot,
            metric="f1",
            title=f"NQ-open oracle test, SmolLM2-135M, {setting}",
        )
        parts.append(f"![quality vs ratio, {setting}](results/{plot.name})\n")
        walls = folder / "wall_seconds.json"
        if walls.is_file():
            data = json.loads(walls.read_text())
            total = sum(data.values())
            rows = " | ".join(f"{k}: {v / 60:.1f} min" for k, v in sorted(data.items()))
            parts.append(
                f"Wall time (all sessions, this machine): {total / 60:.0f} min in total ({rows}).\n"
            )
        parts.append(f"Every prediction: `benchmarks/quality/results/{setting}/eval/*.json`.\n")
    replace_section(args.out, "quality", "\n".join(parts))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
