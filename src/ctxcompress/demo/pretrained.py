"""``ctxcompress demo`` (``make demo``): the shipped compressors, measured on held-out items.

For every compressor shipped in the package (``embedded:<name>``, :mod:`ctxcompress.shipped`)
it compresses the held-out documents its model card was scored on, answers their questions,
and prints side by side the compressor, the shipped references its ``demo.json`` names
(trained truncation at the same budget, the trained full context), the frozen model reading
the context truncated to the same ratio and the full context (both zero-shot, through the chat
template): quality, the KV entries the decoder holds (and their bytes), answer latency, the
model card's score for the same items, and one worked example a person can read, chosen by a
fixed rule (the first item) before anyone answered. Then one verdict per budget: which row to
use at that ratio on those items, against the runner-up and against the whole text, with
paired 95% intervals. Nothing is trained.

The items and the card's scores come from the compressor's ``demo.json`` (written when it was
shipped, by the same evaluation code), so the printed table and the card agree on these
items; a score that differs by more than :data:`CARD_TOLERANCE` is flagged, never hidden.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

import ctxcompress as cc

from .. import shipped
from ..data import load_qa
from ..evaluation import EvalResult, evaluate, replace_section
from ..evaluation.significance import paired_difference
from ..models import BaseModel
from ..prompts import chat_prompt_options
from .training import quiet

CARD_TOLERANCE = 0.005
"""How far (0-1 scale, i.e. half a point in %) a score may sit from the card's and still match:
greedy decoding in float32 can differ in a last digit across CPUs."""

DEMO_FILE = "demo.json"


def demo_spec(name: str) -> dict[str, Any]:
    """The shipped compressor's ``demo.json``: ``data``, ``limit``, ``seed``, ``options``,
    ``metric``, the card's ``scores`` by row label, optionally ``references`` (shipped
    compressors run beside it) and ``needles`` (a second item set of the same shape:
    :func:`needle_spec`) (checksums verified first)."""
    folder = shipped.resolve(name)
    path = folder / DEMO_FILE
    if not path.is_file():
        raise cc.errors.CorruptFileError(f"{name}: {DEMO_FILE} is missing: reinstall ctxcompress")
    return json.loads(path.read_text())


def needle_spec(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The demo's needle items (``needles`` in ``demo.json``: e.g. RULER ``niah_single`` at 2k
    tokens, string match), with the compressor's shipped ``references``; None without."""
    needles = spec.get("needles")
    if not needles:
        return None
    return {"references": spec.get("references", []), "metric": "string_match", **needles}


def kv_bytes_per_entry(base: BaseModel) -> int:
    """Bytes of one KV-cache entry of the decoder (keys and values of every layer), in the
    base model's dtype: what each kept entry costs whatever the method."""
    config = base.model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    element = next(base.model.parameters()).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element


def rows(
    name: str,
    spec: dict[str, Any],
    base: BaseModel,
    cache: dict[str, EvalResult],
    comp: cc.Compressor | None = None,
) -> tuple[list[EvalResult], dict[str, str]]:
    """The shipped compressor, the shipped references its spec names (``references``) and its
    two zero-shot references on the demo's items (the references are cached by data and
    ratio: compressors on the same items share them), and the items' contexts by id.
    ``base`` is the frozen model of the zero-shot references; a compressor loads its own copy
    of the base model it was trained on (a model object carries one compressor's adapter);
    ``comp``: the compressor already loaded."""
    comp = comp or cc.load_compressor(name)
    examples = load_qa(
        spec["data"], limit=spec["limit"], seed=spec.get("seed"), **spec.get("options", {})
    )
    chat = chat_prompt_options(base.tokenizer) if base.tokenizer.chat_template else {}
    ratio = comp.config.ratio
    references = {
        **{
            reference.removeprefix(shipped.PREFIX): lambda ref=reference: cc.load_compressor(ref)
            for reference in spec.get("references", [])
        },
        # The chat template's prefix counts against the budget: as many KV entries as the
        # compressor keeps (on top of it, truncation would hold ~1.4x more at 4x).
        f"truncation@{ratio}x (zero-shot)": lambda: cc.build_compressor(
            "truncation", base, ratio=ratio, prefix_in_budget=True, **chat
        ),
        "full_context (zero-shot)": lambda: cc.build_compressor("full_context", base, **chat),
    }
    limits = {"max_new_tokens": spec.get("max_new_tokens", 32), "batch_size": 16}
    results = [evaluate(comp, examples, label=name.removeprefix(shipped.PREFIX), **limits)]
    for label, build in references.items():
        key = f"{spec['data']}|{spec['limit']}|{spec.get('seed')}|{label}"
        if key not in cache:
            cache[key] = evaluate(build(), examples, label=label, **limits)
        results.append(cache[key])
    return results, {e.id: e.context for e in examples}


def table(name: str, spec: dict[str, Any], results: list[EvalResult], entry_bytes: int) -> Table:
    metric = spec.get("metric", "f1")
    n = results[0].overall["n"]
    out = Table(title=f"{name} on {spec['data']}: {n} held-out questions ({metric}, %)")
    columns = ("system", metric, "model card", "KV entries", "KV KiB", "ratio", "answer ms")
    for column in columns:
        out.add_column(column, justify="left" if column == "system" else "right")
    card = spec.get("scores", {})
    for r in results:
        score = r.overall[metric]
        expected = card.get(r.method)
        if expected is None:
            card_cell = "-"
        elif abs(expected - score) <= CARD_TOLERANCE:
            card_cell = f"{100 * expected:.1f} (matches)"
        else:
            card_cell = f"[red]{100 * expected:.1f} (differs)[/red]"
        entries = r.overall["compressed_length"]
        out.add_row(
            r.method,
            f"{100 * score:.1f}",
            card_cell,
            f"{entries:.0f} of {r.overall['original_length']:.0f}",
            f"{entries * entry_bytes / 1024:.0f}",
            f"{r.ratio:.1f}x",
            f"{1000 * r.seconds['generate'] / n:.0f}",
        )
    return out


EXAMPLE_RULE = "the first of the held-out items, fixed before any system answered"
"""How the worked example is chosen (printed with it): never by who answered it well."""


def worked_example(results: list[EvalResult], metric: str, contexts: dict[str, str]) -> str:
    """The first item (:data:`EXAMPLE_RULE`): question, gold answer, every system's answer,
    and where the context starts."""
    chosen = results[0].predictions[0]
    context = contexts.get(chosen.id, "")
    lines = [
        f"[dim]Chosen as {EXAMPLE_RULE}.[/dim]",
        f"[bold]Question[/bold] ({chosen.id}): {chosen.question}",
        f"[bold]Context[/bold] ({chosen.original_length} tokens): {context[:240]}...",
        f"[bold]Gold[/bold]: {chosen.golds[0]}",
    ]
    for r in results:
        p = next(q for q in r.predictions if q.id == chosen.id)
        lines.append(f"[bold]{r.method}[/bold] ({100 * p.scores[metric]:.0f}): {p.prediction}")
    return "\n".join(lines)


def reads_whole_text(result: EvalResult) -> bool:
    """Whether a row kept every context token (the full context, trained or not)."""
    return result.overall["compressed_length"] >= result.overall["original_length"]


def verdict(ratio: int, results: list[EvalResult], metric: str) -> str:
    """One line for one budget on one set of items: the best row that compresses to
    ``ratio`` (a shipped compressor, a shipped reference or zero-shot truncation) against the
    runner-up, and what it gives up against the best row that reads the whole text — paired
    95% bootstrap intervals on the same items, said "within noise" when one spans zero."""
    compressed = [r for r in results if not reads_whole_text(r)]
    whole = [r for r in results if reads_whole_text(r)]
    if not compressed:
        return f"at {ratio}x: no compressed row to compare"
    ranked = sorted(compressed, key=lambda r: r.overall[metric], reverse=True)
    best, n = ranked[0], ranked[0].overall["n"]

    def score(r: EvalResult) -> str:
        return f"{100 * r.overall[metric]:.1f}"

    def compared(difference) -> str:
        noise = difference.low <= 0 <= difference.high
        return difference.percent(signed=True) + (", within noise" if noise else "")

    line = f"at {ratio}x use [bold]{best.method}[/bold]: {metric} {score(best)}"
    if len(ranked) > 1:
        runner = ranked[1]
        lead = paired_difference(best, runner, metric)
        if lead.low <= 0:
            line = f"at {ratio}x no clear winner: {best.method} {metric} {score(best)}"
        line += f" vs {runner.method} {score(runner)} ({compared(lead)})"
    if whole:
        full = max(whole, key=lambda r: r.overall[metric])
        given_up = paired_difference(best, full, metric)
        line += f"; the whole text ({full.method}) {score(full)}: {compared(given_up)}"
    return f"{line} — {n} items"


REPORT_SECTION = "demo"
"""The marked section (``<!-- begin demo -->``) ``--report PAGE`` writes the verdicts into."""
REPORT_COMMAND = "ctxcompress demo --report README.md"


def write_report(page: Path, lines: list[str], seconds: float) -> None:
    """The verdicts as Markdown in ``page``'s ``demo`` section, with the command that measured
    them (the rest of the page is kept)."""
    plain = [line.replace("[bold]", "**").replace("[/bold]", "**") for line in lines]
    markdown = "\n".join(
        [
            f"Which compressor to use, as measured by `{REPORT_COMMAND}` (the shipped "
            "compressors on their cards' held-out items; paired 95% intervals; "
            f"{seconds:.0f} s on a 2-thread CPU):",
            "",
            *[f"- {line}" for line in plain],
        ]
    )
    replace_section(page, REPORT_SECTION, markdown)


def main(
    base_model: BaseModel | str | None = None,
    console: Console | None = None,
    report: Path | None = None,
) -> dict:
    """Run the demo on every shipped compressor; returns each one's rows' scores. ``report``:
    a Markdown page whose ``demo`` section gets the verdicts (:func:`write_report`)."""
    console = console or Console()
    # A shipped reference another compressor names (its demo.json ``references``) runs beside
    # that compressor, not on its own.
    specs = {name: demo_spec(name) for name in shipped.available()}
    referenced = {ref for spec in specs.values() for ref in spec.get("references", [])}
    names = [name for name in specs if name not in referenced]
    console.rule("[bold]ctxcompress demo: pretrained compressors")
    summary: dict[str, dict[str, Any]] = {}
    with quiet():
        started = time.perf_counter()
        base = base_model if isinstance(base_model, BaseModel) else cc.load_base_model(base_model)
        entry_bytes = kv_bytes_per_entry(base)
        console.print(f"Loaded base model {base.source} in {time.perf_counter() - started:.1f} s")
        cache: dict[str, EvalResult] = {}
        budgets: dict[tuple, dict[str, EvalResult]] = {}
        for name in names:
            spec = specs[name]
            comp = cc.load_compressor(name)
            results, contexts = rows(name, spec, base, cache, comp=comp)
            metric = spec.get("metric", "f1")
            console.print(table(name, spec, results, entry_bytes))
            example = worked_example(results, metric, contexts)
            console.print(Panel(example, title=f"{name}: a worked example"))
            summary[name] = {r.method: r.overall for r in results}
            measured = [(spec, results)]
            if needles := needle_spec(spec):  # exact recall: what compressors most often lose
                found, _ = rows(name, needles, base, cache, comp=comp)
                console.print(table(name, needles, found, entry_bytes))
                summary[f"{name} {needles['data']}"] = {r.method: r.overall for r in found}
                measured.append((needles, found))
            for items_spec, found in measured:
                metric = items_spec.get("metric", "f1")
                key = (comp.config.ratio, items_spec["data"], items_spec["limit"])
                key += (items_spec.get("seed"), metric)
                budgets.setdefault(key, {}).update({r.method: r for r in found})
            del comp
        lines = [
            f"{verdict(ratio, list(found.values()), metric)} of {data}"
            for (ratio, data, _, _, metric), found in budgets.items()
        ]
        console.print(Panel("\n".join(lines), title="Which to use at each budget"))
        seconds = time.perf_counter() - started
        console.print(f"The demo took {seconds:.0f} s after the venv.")
        if report is not None:
            write_report(report, lines, seconds)
            console.print(f"Wrote the verdicts into {report} (section '{REPORT_SECTION}').")
    card = Path(str(shipped.root()))
    console.print(
        Panel(
            "Each compressor's model card (data, training steps, recipe, scores with their "
            f"commands, limits) is in {card}/<name>/MODEL_CARD.md. These are small held-out "
            "samples: read differences of a few points as noise; the cards give the full test "
            "sets with paired intervals. `ctxcompress demo --train` trains a compressor "
            "from scratch instead.",
            title="What this measured",
            border_style="yellow",
        )
    )
    return summary
