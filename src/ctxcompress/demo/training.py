"""``ctxcompress demo --train``: train a small SAC compressor and measure it.

On the embedded SmolLM2-135M-Instruct and the ACLSum data set (installed from PyPI, so the
demo needs no files beside the repository), it

1. trains a SAC compressor at ratio 4 on the training papers: compress a paper's title and
   abstract, answer "Summarize the <aspect> of this paper in one sentence." with the
   human-written aspect summary (``configs``-free: the settings are :class:`DemoSettings`);
2. evaluates it on held-out validation papers against the same frozen model reading the
   context truncated to the same token budget, the full context, and no context (those three
   zero-shot, through the model's chat template);
3. prints the ROUGE table, writes every prediction, a Markdown table and a plot of quality
   against compression ratio into ``demo-output/``, and says where they are.

This is a CPU-sized run (minutes, a 135M model, a few hundred examples), not the paper's
setting (two 20k-step stages on GPUs): the numbers show the system working and measured
honestly, not the method's ceiling. Rerunning reuses the finished training run.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from transformers.utils import logging as hf_logging

import ctxcompress as cc

from ..data import load_summarization
from ..errors import InvalidInputError
from ..evaluation import EvalResult, evaluate, markdown_table, plot_quality_vs_ratio
from ..models import BaseModel
from ..prompts import chat_prompt_options
from ..training import Trainer, parse_config

SETTINGS_FILE = Path(__file__).with_name("training.yaml")


@dataclass
class DemoSettings:
    """What the demo trains and evaluates; the defaults are ``training.yaml`` beside this
    module (:meth:`from_yaml`), the one source of the demo's settings."""

    ratio: int
    steps: int
    batch_size: int
    lr: float
    lora_rank: int
    train_data: str
    eval_data: str
    document: str
    """ACLSum document source: title + abstract (short enough for a CPU demo)."""
    eval_limit: int
    max_new_tokens: int
    out_dir: Path

    @classmethod
    def from_yaml(cls, path: Path = SETTINGS_FILE, **overrides: Any) -> DemoSettings:
        """The settings of ``path`` (default the packaged ``training.yaml``), with
        ``overrides``; an unknown or missing key is a clear error."""
        values = {**yaml.safe_load(Path(path).read_text()), **overrides}
        names = {f.name for f in fields(cls)}
        if unknown := sorted(values.keys() - names):
            raise InvalidInputError(
                f"{path}: unknown demo settings {unknown}; known: {sorted(names)}"
            )
        if missing := sorted(names - values.keys()):
            raise InvalidInputError(f"{path}: demo settings {missing} are missing")
        values["out_dir"] = Path(values["out_dir"])
        return cls(**values)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' logging, progress bars and warnings (the demo prints its own)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()


def train_sac(base: BaseModel, s: DemoSettings) -> tuple[cc.Compressor, float]:
    """Train (or reuse a finished run of) the demo's SAC compressor; returns it + seconds."""
    config = parse_config(
        {
            "method": "sac",
            "method_options": {
                "ratio": s.ratio,
                "lora_rank": s.lora_rank,
                "lora_alpha": 2 * s.lora_rank,
            },
            "data": [
                {
                    "source": s.train_data,
                    "objective": "summarization",
                    "options": {"source": s.document},
                }
            ],
            "train": {
                "steps": s.steps,
                "batch_size": s.batch_size,
                "micro_batch_size": s.batch_size,
                "lr": s.lr,
                "warmup_steps": 5,
                "log_every": 5,
                "save_every": s.steps,
                "seed": 0,
            },
            "output_dir": str(s.out_dir / "sac-train"),
        }
    )
    start = time.perf_counter()
    trainer = Trainer(config, base_model=base)
    trainer.run()
    return trainer.compressor, time.perf_counter() - start


def main(
    base_model: BaseModel | str | None = None,
    settings: DemoSettings | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the evaluation results by system (also written to disk)."""
    s = settings or DemoSettings.from_yaml()
    console = console or Console()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]ctxcompress demo")
    console.print(
        f"Train SAC ({s.ratio}x) on {s.train_data} ({s.document}), evaluate on "
        f"{s.eval_data} against truncation to the same budget, the full context and no "
        "context. CPU-sized: expect about 5 minutes."
    )
    with quiet():
        started = time.perf_counter()
        base = base_model if isinstance(base_model, BaseModel) else cc.load_base_model(base_model)
        console.print(f"Loaded base model {base.source} in {time.perf_counter() - started:.1f} s")
        sac, train_seconds = train_sac(base, s)
        examples = load_summarization(s.eval_data, limit=s.eval_limit, seed=0, source=s.document)
        chat = chat_prompt_options(base.tokenizer) if base.tokenizer.chat_template else {}
        systems: list[tuple[str, cc.Compressor]] = [
            (f"sac@{s.ratio}x (trained {s.steps} steps)", sac),
            (
                f"truncation@{s.ratio}x (zero-shot)",
                cc.build_compressor("truncation", base, ratio=s.ratio, **chat),
            ),
            ("full_context (zero-shot)", cc.build_compressor("full_context", base, **chat)),
            ("no_context (zero-shot)", cc.build_compressor("no_context", base, **chat)),
        ]
        results: dict[str, EvalResult] = {}
        for label, comp in systems:
            results[label] = evaluate(
                comp,
                examples,
                max_new_tokens=s.max_new_tokens,
                batch_size=16,
                label=label,
                progress=True,
            )
            results[label].save(out / "eval" / f"{label.split(' ')[0]}.json")
    table = Table(title=f"{s.eval_data}: {len(examples)} held-out summaries (ROUGE F, %)")
    for column in ("system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "L", "C", "ratio", "answer s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for label, r in results.items():
        o = r.overall
        table.add_row(
            label,
            f"{100 * o['rouge1']:.1f}",
            f"{100 * o['rouge2']:.1f}",
            f"{100 * o['rougeL']:.1f}",
            f"{o['original_length']:.0f}",
            f"{o['compressed_length']:.0f}",
            f"{r.ratio:.1f}x",
            f"{r.seconds['generate'] / len(examples):.2f}",
        )
    console.print(table)
    plotted = [r for r in results.values() if not r.method.startswith("no_context")]
    plot = plot_quality_vs_ratio(
        plotted,
        out / "quality_vs_ratio.png",
        metric="rougeL",
        title="ACLSum validation, SmolLM2-135M, ROUGE-L",
    )
    (out / "results.md").write_text(
        "# ctxcompress demo\n\n" + markdown_table(list(results.values())) + "\n\n"
        f"Settings: {asdict(s) | {'out_dir': str(s.out_dir)}}\n"
    )
    sample = next(iter(results.values())).predictions[0]
    console.print(
        f"[bold]Example[/bold] ({sample.id}) question: {sample.question}\n"
        f"  reference: {sample.golds[0]}\n  SAC: {sample.prediction}"
    )
    console.print(
        Panel(
            f"SAC was trained for {s.steps} steps x {s.batch_size} examples on CPU "
            f"({train_seconds / 60:.1f} min; the paper trains two 20k-step stages x 16 on GPUs). "
            "The baselines are the frozen model itself, zero-shot. ROUGE on "
            f"{len(examples)} validation summaries is a small-sample measurement: treat "
            "differences of a few points as noise.\n"
            f"Predictions: {out / 'eval'}/*.json   Table: {out / 'results.md'}   Plot: {plot}",
            title="What this measured",
            border_style="yellow",
        )
    )
    return {k: v.overall for k, v in results.items()}
