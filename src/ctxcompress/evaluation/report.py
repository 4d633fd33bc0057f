"""Plots of quality against compression ratio, and against where the answer sits in the
context, from saved evaluation results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .runner import EvalResult

DEFAULT_METRIC = {"qa": "f1", "summarization": "rougeL"}
LABELS = {
    "f1": "token F1",
    "em": "exact match",
    "sac_f1": "ROUGE-1 F (SAC convention)",
    "sac_em": "EM (SAC convention)",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "string_match": "string match (RULER)",
}


def system_name(result: EvalResult) -> str:
    """The system without its ratio suffix (``"sac@4x"`` -> ``"sac"``)."""
    return result.method.split("@")[0]


def _line_plot(
    lines: dict[str, tuple[list[float], list[float], str]],
    out: str | Path,
    xlabel: str,
    ylabel: str,
    title: str | None,
    log2_x: bool = False,
) -> Path:
    """Draw ``{label: (xs, ys, style)}`` as one PNG at ``out`` (the plots' shared frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (xs, ys, style) in lines.items():
        ax.plot(xs, ys, style, marker="o", label=label)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_quality_vs_ratio(
    results: Sequence[EvalResult],
    out: str | Path,
    *,
    metric: str | None = None,
    title: str | None = None,
) -> Path:
    """One line per system (quality against achieved ratio, log-scaled x); PNG at ``out``."""
    if not results:
        raise ValueError("no results to plot")
    metric = metric or DEFAULT_METRIC[results[0].task]
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in results:
        series[system_name(r)].append((r.ratio, 100 * r.overall[metric]))
    lines = {}
    for name, points in sorted(series.items()):
        points.sort()
        style = "--" if name in ("full_context", "no_context") else "-"
        lines[name] = ([x for x, _ in points], [y for _, y in points], style)
    ylabel = f"{LABELS.get(metric, metric)} (%)"
    return _line_plot(lines, out, "compression ratio L / C (log scale)", ylabel, title, True)


DEPTH_KEYS = ("depth", "answer_depth", "gold_position")
"""Prediction ``meta`` keys that say where the answer is: RULER needle / gold-document depth
(0..1), SQuAD answer offset / paragraph length (0..1), index of the gold passage."""


def depth_key(results: Sequence[EvalResult]) -> str | None:
    """The first of :data:`DEPTH_KEYS` that every prediction of every result records."""
    for key in DEPTH_KEYS:
        if all(key in p.meta for r in results for p in r.predictions):
            return key
    return None


def quality_by_depth(
    result: EvalResult, key: str, metric: str, bins: int = 5
) -> list[tuple[float, float, int]]:
    """``(bin centre, mean metric, n)`` per depth bin: ``bins`` equal bins of [0, 1] for a
    fraction, one bin per value for an integer position (``gold_position``)."""
    groups: dict[float, list[float]] = defaultdict(list)
    for p in result.predictions:
        value = p.meta[key]
        if isinstance(value, int) and not isinstance(value, bool):
            centre = float(value)
        else:
            index = min(int(float(value) * bins), bins - 1)
            centre = (index + 0.5) / bins
        groups[centre].append(p.scores[metric])
    return [(c, sum(v) / len(v), len(v)) for c, v in sorted(groups.items())]


def depth_table(
    results: Sequence[EvalResult], key: str, metric: str | None = None, bins: int = 5
) -> str:
    """:func:`quality_by_depth` as Markdown: one row per result, one column per depth bin
    (``metric`` in %, with ``n`` per bin), for report pages beside the plot."""
    if not results:
        raise ValueError("no results to tabulate")
    metric = metric or DEFAULT_METRIC[results[0].task]
    table = {
        r.method: {c: (m, n) for c, m, n in quality_by_depth(r, key, metric, bins)} for r in results
    }
    centres = sorted({c for row in table.values() for c in row})
    integer = all(isinstance(p.meta[key], int) for r in results for p in r.predictions)

    def label(centre: float) -> str:
        if integer:
            return f"{key}={centre:.0f}"
        return f"{key} {centre - 0.5 / bins:.1f}-{centre + 0.5 / bins:.1f}"

    head = ["system", *map(label, centres)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in table.items():
        cells = [f"{100 * row[c][0]:.1f} (n={row[c][1]})" if c in row else "-" for c in centres]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


def plot_quality_vs_depth(
    results: Sequence[EvalResult],
    out: str | Path,
    *,
    key: str,
    metric: str | None = None,
    bins: int = 5,
    title: str | None = None,
) -> Path:
    """One line per result: mean quality per depth bin (:func:`quality_by_depth`); PNG."""
    if not results:
        raise ValueError("no results to plot")
    metric = metric or DEFAULT_METRIC[results[0].task]
    lines = {}
    for r in results:
        points = quality_by_depth(r, key, metric, bins)
        lines[r.method] = ([c for c, _, _ in points], [100 * m for _, m, _ in points], "-")
    ylabel = f"{LABELS.get(metric, metric)} (%)"
    return _line_plot(lines, out, f"{key} of the answer in the context", ylabel, title)


def replace_section(path: str | Path, name: str, markdown: str) -> None:
    """Put generated ``markdown`` between ``<!-- begin NAME -->`` / ``<!-- end NAME -->``.

    Benchmark reports regenerate only their own marked part of a hand-written page, so the
    analysis around it survives. A page without the markers gets the section appended. The
    file is replaced atomically.
    """
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.is_file() else ""
    if text.count(begin) > 1 or text.count(end) > 1:
        raise ValueError(f"{path} has the '{name}' markers more than once; keep one pair")
    if (begin in text) != (end in text) or (begin in text and text.index(begin) > text.index(end)):
        raise ValueError(f"{path}: '{begin}' and '{end}' must both be there, in that order")
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
