"""Compressors shipped inside the package, by name: ``load_compressor("embedded:sac-4x")``.

Each lives in ``ctxcompress/compressors/<name>/`` (package data): the folder
``save_pretrained`` writes, a ``MODEL_CARD.md`` (data, steps, recipe, scores with their
commands, the command that retrains it, limits) and a ``manifest.json`` listing every file
with its SHA-256. :func:`resolve` checks every file against the manifest before anything is
loaded, so a missing or altered file is a clear error, never a silently different model.

Shipped: ``embedded:sac-4x``, ``embedded:sac-16x`` and ``embedded:pic-16x`` (issue 19;
``benchmarks/headline/ship.py`` adds one). A compressor replaced by a newer version keeps its
name; its ``history.json`` lists every version's fingerprint, so a context saved with an
earlier version is refused saying which version made it.
Any other ``embedded:<name>`` of a compressor is refused with a message listing what is
shipped. A primitive (the standard library and the package's errors and atomic writes).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from .atomic import write_text_atomic
from .errors import CorruptFileError, ModelLoadError

PREFIX = "embedded:"
MANIFEST = "manifest.json"
BASE_MODEL_NAMES = {"embedded:smollm2-135m-instruct", "embedded:gemma3-270m"}
"""``embedded:`` names that are base models (``load_base_model``), not compressors."""


def root() -> Path:
    """Where the shipped compressors live (``ctxcompress/compressors``)."""
    return Path(str(resources.files("ctxcompress") / "compressors"))


def is_shipped_name(spec: object) -> bool:
    """Whether ``spec`` names a shipped compressor (``embedded:<name>``)."""
    return (
        isinstance(spec, str)
        and spec.startswith(PREFIX)
        and spec not in BASE_MODEL_NAMES
        and not Path(spec).exists()
    )


def available() -> list[str]:
    """The names of the shipped compressors, ``embedded:<name>``."""
    folder = root()
    if not folder.is_dir():
        return []
    return sorted(PREFIX + p.name for p in folder.iterdir() if (p / MANIFEST).is_file())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(spec: str) -> Path:
    """The folder of the shipped compressor ``spec`` after checking every file's checksum."""
    name = spec.removeprefix(PREFIX)
    folder = root() / name
    if not (folder / MANIFEST).is_file():
        known = ", ".join(available()) or "none yet (issue 19 ships them)"
        raise ModelLoadError(
            f"no shipped compressor {spec!r}; shipped: {known}. Train one with "
            "`ctxcompress train` and load its folder instead."
        )
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{folder / MANIFEST} is unreadable: {exc}") from exc
    for relative, expected in sorted(files.items()):
        path = folder / relative
        if not path.is_file():
            raise CorruptFileError(
                f"shipped compressor {spec!r} is missing {relative}: reinstall ctxcompress"
            )
        if sha256(path) != expected:
            raise CorruptFileError(
                f"shipped compressor {spec!r}: {relative} does not match its checksum (the "
                "file was altered or damaged): reinstall ctxcompress"
            )
    return folder


HISTORY = "history.json"
"""A shipped compressor's versions, oldest first: ``{"versions": [{"version", "fingerprint",
"changed"}]}``; the last is the one installed (``benchmarks/headline/ship.py`` appends)."""


def history(folder: Path) -> list[dict]:
    """The versions recorded in ``folder`` (none for a compressor shipped before them)."""
    path = folder / HISTORY
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["versions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path} is unreadable: {exc}") from exc


def versions(spec: str, folder: Path) -> dict[str, str]:
    """Fingerprint -> ``"embedded:<name> version N"`` for every recorded version of the
    shipped compressor ``spec`` whose (checked) folder is ``folder``: what a context made by
    an earlier version is told."""
    return {v["fingerprint"]: f"{spec} version {v['version']}" for v in history(folder)}


def write_manifest(folder: Path) -> Path:
    """Record every file of ``folder`` (but the manifest) with its SHA-256: run once when a
    trained compressor is added to the package."""
    files = {
        str(p.relative_to(folder)): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    return write_text_atomic(folder / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")
