"""``ctxcompress compress``, ``extend`` and ``generate``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..context import CompressedContext
from ..errors import ContextMismatchError, InvalidInputError
from ..quantization import check_scheme
from ._common import (
    BaseModelOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MethodOpt,
    ModelOpt,
    app,
    console,
    err_console,
    get_compressor,
    read_text,
    unescape,
    untrained_note,
    user_errors,
)

QuantizeOpt = Annotated[
    str | None,
    typer.Option(
        help="'int8': store the tensors as int8 with float32 scales (~4x smaller than "
        "float32); loading dequantizes them."
    ),
]


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
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            min=1,
            help=(
                "At most this many entries: the ratio is chosen for this document (never "
                "below the compressor's own) and printed."
            ),
        ),
    ] = None,
    quantize: QuantizeOpt = None,
    keep_tail: Annotated[
        bool,
        typer.Option(
            help="Keep the last partial chunk's tokens in the file so that `ctxcompress "
            "extend` grows the context exactly as compressing the whole text would (SAC)."
        ),
    ] = False,
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
    check_scheme(quantize)
    comp, fresh = get_compressor(
        model=model, base_model=base_model, method=method, ratio=ratio, dtype=dtype, device=device
    )
    if fresh:
        untrained_note()
    with err_console.status("Compressing ..."):
        start = time.perf_counter()
        ctx = comp.compress(document, budget=budget, keep_tail=keep_tail)
        seconds = time.perf_counter() - start
    ctx.save(output, quantize=quantize)
    result = {
        "output": str(output),
        "method": ctx.method,
        "original_length": ctx.original_length,
        "compressed_length": ctx.compressed_length,
        "ratio": round(ctx.ratio, 3),
        "r": ctx.meta.get("ratio"),  # the method's ratio: chosen for --budget, else its own
        "budget": budget,
        "bytes": ctx.num_bytes,
        "file_bytes": output.stat().st_size,
        "quantize": quantize,
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
    if budget is not None:
        table.add_row("budget", f"{budget} entries (ratio r = {ctx.meta.get('ratio')} chosen)")
    table.add_row("size", f"{ctx.num_bytes:,} bytes in memory, {result['file_bytes']:,} on disk")
    if quantize:
        table.add_row("stored as", f"{quantize} with float32 scales")
    table.add_row("compression time", f"{seconds:.3f} s")
    table.add_row("compressor", f"{ctx.compressor}{' (fresh, untrained)' if fresh else ''}")
    console.print(table)


@app.command()
@user_errors
def extend(
    context: Annotated[
        Path, typer.Option("--context", "-c", help="The .ctx file to grow.", dir_okay=False)
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Where to write the grown context.", dir_okay=False),
    ],
    file: Annotated[
        str | None,
        typer.Argument(
            help="File with the text to add ('-' = stdin), or --text.", show_default=False
        ),
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="The text to add, inline.")] = None,
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    quantize: QuantizeOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grow a compressed context by text that continues its document, compressing only the
    new text (SAC). Exact — as if the whole text were compressed — for a context made with
    `compress --keep-tail`; otherwise the new text starts new chunks. The input file stays."""
    if (file is None) == (text is None):
        raise InvalidInputError("give the added text either as a FILE argument or --text")
    added = read_text(file) if file is not None else text
    check_scheme(quantize)
    ctx = load_context_file(context)
    comp, fresh = compressor_for(ctx, model, base_model, None, None, dtype, device)
    check_match(ctx, comp, fresh)
    start = time.perf_counter()
    grown = comp.extend(ctx.to(comp.device, comp.dtype), added)
    seconds = time.perf_counter() - start
    grown.save(output, quantize=quantize)
    result = {
        "output": str(output),
        "original_length": grown.original_length,
        "compressed_length": grown.compressed_length,
        "added_tokens": grown.original_length - ctx.original_length,
        "exact": "tail_ids" in ctx.meta,
        "seconds": round(seconds, 4),
    }
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"{escape(str(output))}: L {ctx.original_length} -> {grown.original_length} tokens, "
        f"C {ctx.compressed_length} -> {grown.compressed_length} entries "
        f"({'exact: open tail' if result['exact'] else 'new chunks after a closed tail'}), "
        f"{seconds:.3f} s"
    )


@app.command()
@user_errors
def generate(
    context: Annotated[
        list[Path],
        typer.Option(
            "--context",
            "-c",
            help="A .ctx file written by `ctxcompress compress`; repeat it to read several "
            "as one, in order (composition).",
            dir_okay=False,
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
    loaded = [load_context_file(path) for path in context]  # fail fast, before the model
    comp, fresh = compressor_for(loaded[0], model, base_model, method, ratio, dtype, device)
    for ctx in loaded:
        check_match(ctx, comp, fresh)
    ctx = comp.compose([c.to(comp.device, comp.dtype) for c in loaded])
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
            "context": str(context[0]) if len(context) == 1 else [str(c) for c in context],
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


def load_context_file(path: Path) -> CompressedContext:
    if not path.exists():
        raise InvalidInputError(f"context file {path} does not exist")
    return CompressedContext.load(path)


def compressor_for(ctx, model, base_model, method, ratio, dtype, device):
    """The compressor a context names: ``--model``, or a fresh one rebuilt with the method
    and ratio the context records (its random init is seeded)."""
    comp, fresh = get_compressor(
        model=model,
        base_model=base_model,
        method=method or ctx.method,
        ratio=ratio if ratio is not None or model is not None else ctx.meta.get("ratio"),
        dtype=dtype,
        device=device,
    )
    if fresh:
        untrained_note()
    return comp, fresh


def check_match(ctx: CompressedContext, comp, fresh: bool) -> None:
    try:
        comp.check_context(ctx)
    except ContextMismatchError as exc:
        if not fresh:
            raise
        raise ContextMismatchError(
            f"{exc} (A fresh untrained compressor matches a context only when built with the "
            "same --base-model, --dtype, --method and --ratio that `ctxcompress compress` used.)"
        ) from None
