"""``ctxcompress train``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidInputError
from ._common import app, console, err_console, user_errors


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
    eval_data: Annotated[
        str | None,
        typer.Option(
            help="QA data for a learning curve, e.g. nq-oracle:dev (see `ctxcompress eval`): "
            "EM/F1 at the start and every --eval-every steps, appended to "
            "<output_dir>/eval.jsonl (kept across resumes)."
        ),
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between learning-curve points (with --eval-data).")
    ] = None,
    eval_limit: Annotated[
        int, typer.Option(help="Learning-curve examples (the first N of --eval-data).")
    ] = 50,
) -> None:
    """Train a compressor (stage 1 or 2) as a YAML config describes.

    Runs on one CPU/GPU as is; for several GPUs or processes launch it through accelerate:
    `accelerate launch --num_processes 8 -m ctxcompress train --config ...` (DDP), or with
    `--config_file configs/accelerate/fsdp.yaml` / `deepspeed.yaml`. Checkpoints go to
    `<output_dir>/checkpoints/` every `train.save_every` steps; rerunning the same command
    resumes from the latest one. The trained compressor is written to `<output_dir>/compressor`.
    """
    from ..training import Trainer, load_config

    if (eval_data is None) != (eval_every is None):
        raise InvalidInputError("--eval-data and --eval-every go together: give both or neither")
    cfg = load_config(config, overrides or [])
    on_eval = None
    if eval_data is not None:
        from ..data import load_qa

        examples = load_qa(eval_data, limit=eval_limit)  # before training: fail fast
        on_eval = learning_curve(examples, Path(cfg.output_dir) / "eval.jsonl")
    trainer = Trainer(cfg)
    summary = trainer.run(until_step=until_step, eval_every=eval_every, on_eval=on_eval)
    if trainer.accelerator.is_main_process:
        console.print_json(data={k: v for k, v in summary.items() if not isinstance(v, dict)})


def learning_curve(examples: list, path: Path) -> Callable[[Any], None]:
    """An ``on_eval`` for :meth:`Trainer.run`: EM/F1 on ``examples`` appended to ``path``
    (JSON lines with the step and the training clock), skipping steps already there."""
    from ..evaluation import evaluate
    from ..training.checkpoint import read_log, trim_log

    def record(trainer: Any) -> None:
        trim_log(path, trainer.step)  # a killed run: torn lines, points to be redone
        if trainer.step in {point.get("step") for point in read_log(path)}:
            return
        result = evaluate(trainer.compressor, examples, progress=False, label="learning curve")
        point = {
            "step": trainer.step,
            "em": result.overall["em"],
            "f1": result.overall["f1"],
            "n": len(examples),
            "train_seconds": trainer.train_seconds,
        }
        with path.open("a") as f:
            f.write(json.dumps(point) + "\n")
        err_console.print(
            f"step {trainer.step}: EM {100 * point['em']:.1f} F1 {100 * point['f1']:.1f} "
            f"({len(examples)} examples)"
        )

    return record
