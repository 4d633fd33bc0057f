"""``ctxcompress demo`` (``make demo``).

By default the pretrained demo (:mod:`.pretrained`): the compressors shipped in the package,
measured on held-out items against truncation and the full context, nothing trained. With
``train=True`` (``ctxcompress demo --train``), or while no compressor is shipped, the
train-then-evaluate demo (:mod:`.training`): a small SAC compressor trained on ACLSum in a few
minutes and measured against the zero-shot baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .. import shipped
from ..errors import InvalidInputError
from ..models import BaseModel
from .training import DemoSettings


def main(
    base_model: BaseModel | str | None = None,
    settings: DemoSettings | None = None,
    console: Console | None = None,
    train: bool = False,
    report: Path | None = None,
) -> dict[str, Any]:
    """Run the demo; returns its scores by system. ``report``: a Markdown page whose ``demo``
    section gets the pretrained demo's verdicts."""
    from . import pretrained, training

    console = console or Console()
    if not train and shipped.available():
        return pretrained.main(base_model, console=console, report=report)
    if report is not None:
        raise InvalidInputError(
            "--report writes the shipped compressors' verdicts; it does not go with --train "
            "(or a package that ships none)"
        )
    if not train:
        console.print(
            "[yellow]No pretrained compressor is shipped in this version yet (issue 19 trains "
            "them); running the train-then-evaluate demo (`ctxcompress demo --train`).[/yellow]"
        )
    return training.main(base_model, settings, console=console)


__all__ = ["DemoSettings", "main"]
