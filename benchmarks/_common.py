"""What the benchmark drivers share: atomic JSON bookkeeping and the resumable
train-with-a-dev-curve loop (one source for the fair, quality and recipe benchmarks).

Scripts run as ``python benchmarks/<name>/run.py`` put the repository root on ``sys.path``
and import ``benchmarks._common``; tests import the scripts as modules of the ``benchmarks``
namespace package (pytest's ``pythonpath = ["."]``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctxcompress.evaluation import evaluate
from ctxcompress.training import Trainer


def load_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def write_json(path: Path, data: Any) -> None:
    """Atomic: a crash never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def add_seconds(path: Path, key: str, seconds: float) -> None:
    data = load_json(path, {})
    data[key] = data.get(key, 0.0) + seconds
    write_json(path, data)


def smollm2_config(method: str) -> Path:
    """``configs/smollm2/<name>-nq-r4.yaml`` of a method: the files are named after the
    method's module (``500x`` lives in ``methods/xc500.py``, hence ``xc500-nq-r4.yaml``)."""
    from ctxcompress.methods import METHODS, canonical_method

    module = METHODS[canonical_method(method)].__module__.rsplit(".", 1)[1]
    return Path(__file__).resolve().parents[1] / "configs" / "smollm2" / f"{module}-nq-r4.yaml"


def train_with_dev_curve(
    trainer: Trainer,
    name: str,
    dev: Sequence[Any],
    out: Path,
    every: int,
    *,
    clock: dict[str, float] | None = None,
    tag: str = "",
) -> None:
    """Train ``trainer`` to its last step with a dev-F1 point every ``every`` steps (and at
    step 0), appended to ``out/curves.json`` under ``name`` with the training clock.

    Resumable: the trainer resumes from its checkpoints (save them every ``every`` steps)
    and curve points already recorded are not evaluated again. ``clock`` adds an earlier
    stage's training seconds to the curve's time axis. Evaluation wall time goes to
    ``out/wall_seconds.json`` (key ``dev:<name>``).
    """
    clock = clock or {"train_seconds": 0.0, "train_cpu_seconds": 0.0}
    curve_path = out / "curves.json"

    def record(trainer: Trainer) -> None:
        step = trainer.step
        curves = load_json(curve_path, {})
        points = curves.setdefault(name, [])
        if any(p["step"] == step for p in points):
            return  # recorded before a resume
        start = time.perf_counter()
        limits = {"max_new_tokens": 32, "batch_size": 16}
        result = evaluate(trainer.compressor, dev, **limits, progress=False, label=name)
        points.append(
            {
                "step": step,
                "f1": result.overall["f1"],
                "em": result.overall["em"],
                "train_seconds": clock["train_seconds"] + trainer.train_seconds,
                "train_cpu_seconds": clock["train_cpu_seconds"] + trainer.train_cpu_seconds,
            }
        )
        points.sort(key=lambda p: p["step"])
        write_json(curve_path, curves)
        add_seconds(out / "wall_seconds.json", f"dev:{name}", time.perf_counter() - start)
        print(f"[{tag}] {name} step {step}: dev F1 {100 * result.overall['f1']:.1f}", flush=True)

    trainer.run(eval_every=every, on_eval=record)


def plot_curves(
    curves: dict[str, list[dict]], path: Path, title: str, step_label: str, time_label: str
) -> None:
    """Dev F1 against steps (left) and training CPU minutes (right), one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for system, points in curves.items():
        if not points:
            continue
        f1 = [100 * p["f1"] for p in points]
        axes[0].plot([p["step"] for p in points], f1, marker="o", label=system)
        minutes = [p["train_cpu_seconds"] / 60 for p in points]
        axes[1].plot(minutes, f1, marker="o", label=system)
    axes[0].set_xlabel(step_label)
    axes[1].set_xlabel(time_label)
    axes[0].set_ylabel("dev F1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def command_line(script: str, args: Any, exclude: Sequence[str], **overrides: Any) -> str:
    """The command that reruns ``script`` with ``args`` (``overrides`` replace some; lists
    are joined with commas; ``exclude`` names options left out)."""
    options = {**vars(args), **overrides}
    return f"python {script} " + " ".join(
        f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, list) else v}"
        for k, v in options.items()
        if k not in exclude
    )
