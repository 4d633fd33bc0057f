"""Atomic file writes: a file is either its old or its new content, never half of one.

Bytes go to a temporary file in the same folder, are flushed and ``fsync``-ed, and the
file is renamed over the target (``os.replace``, atomic on POSIX). A process killed at any
point leaves the previous file (or none) plus at most a ``.<name>.*`` temporary file that
readers ignore and ``ContextStore.gc`` removes. Used by every writer whose output is read
back after a crash: compressed contexts, the store's index, training state.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically (and durably: fsync before the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))
