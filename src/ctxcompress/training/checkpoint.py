"""Atomic training checkpoints: compressor + optimizer + scheduler + RNG + data position.

Layout of ``<output_dir>/checkpoints/step-000100/``::

    compressor/              save_pretrained() folder: loadable with load_compressor()
    optimizer.safetensors    optimizer state tensors ("<param index>.<name>")
    rng-rank<r>.safetensors  torch (and CUDA) RNG state of every process
    trainer_state.json       step, optimizer param groups, scheduler, sampler, python RNG

Everything is written into a temporary folder that is renamed into place last, so a crash
never leaves a half-written checkpoint, and the previous checkpoints stay intact; folders
are removed by renaming them out of the ``step-*`` namespace first (a removal cut short never
looks like a checkpoint). On resume the logs are cut back to the checkpoint's step
(:func:`trim_log`), so a run killed at any moment and resumed logs every step exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..atomic import write_text_atomic

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(state: list) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def load_state(path: Path) -> tuple[dict[str, Any], dict]:
    """(trainer_state, optimizer_state_dict) of a checkpoint."""
    state = json.loads((path / STATE_FILE).read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    return state, optimizer_from_files(tensors, state["optimizer"])


def discard(folder: Path) -> None:
    """Remove a folder, renaming it to ``.trash-<name>`` first (see the module docstring)."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(output_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints, and what interrupted writes and
    removals left (``.tmp-*``, ``.trash-*``)."""
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        discard(old)
    root = Path(output_dir) / "checkpoints"
    for leftover in [*root.glob(".tmp-*"), *root.glob(".trash-*")] if root.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; a line cut short by a crash is skipped."""
    return _records(path.read_text(encoding="utf-8")) if path.is_file() else []


def _records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def trim_log(path: Path, step: int) -> None:
    """Keep only the records of steps ``<= step`` (those after it will be logged again by
    the resumed run), rewriting the file atomically; nothing to do when none is dropped."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    records = _records(text)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) == len(records) and (not text or text.endswith("\n")):
        return
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
