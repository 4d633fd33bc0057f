"""``ctxcompress serve`` and ``ctxcompress store ls|rm|gc``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import InvalidInputError
from ._common import (
    BaseModelOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MethodOpt,
    MethodOptionsOpt,
    ModelOpt,
    RatioOpt,
    app,
    console,
    err_console,
    get_compressor,
    parse_options,
    untrained_note,
    user_errors,
)

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
    options: MethodOptionsOpt = None,
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
    store_quantize: Annotated[
        str | None,
        typer.Option(
            help="'int8': store contexts as int8 with float32 scales (~4x smaller than "
            "float32); answers then always read the dequantized context."
        ),
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

        from ..serving.app import create_app
        from ..serving.schemas import ServeLimits
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
        store_quantize=store_quantize,
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
    from ..serving.store import ContextStore

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
