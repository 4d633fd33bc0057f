"""``ctxcompress train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    app,
    console,
    user_errors,
)


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
    from ..training import Trainer, load_config

    trainer = Trainer(load_config(config, overrides or []))
    summary = trainer.run(until_step=until_step)
    if trainer.accelerator.is_main_process:
        console.print_json(data={k: v for k, v in summary.items() if not isinstance(v, dict)})
