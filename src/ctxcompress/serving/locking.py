"""The store's concurrency and disk-failure rules: one change at a time across threads and
processes (an ``fcntl`` lock file), and a disk's refusal as a
:class:`~ctxcompress.errors.StorageError` that names the store and what to do."""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DISK_FULL_ERRNOS, StorageError

try:  # POSIX only; elsewhere the store is safe across threads but not across processes.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def locked(lock: threading.RLock, lock_file: Path, root: Path) -> Iterator[None]:
    """``lock`` for this process's threads, then an exclusive ``flock`` on ``lock_file``
    for other processes (none where it cannot exist: see :func:`open_lock_file`)."""
    with lock:
        handle = open_lock_file(lock_file, root)
        if handle is None:
            yield
            return
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_lock_file(path: Path, root: Path) -> Any:
    """The lock file, opened for locking; ``None`` without ``fcntl`` or on a read-only
    folder without one (no process can change such a store, so there is nothing to
    serialise)."""
    if fcntl is None:
        return None
    try:
        return open(path, "a+")  # closed by locked()
    except OSError as exc:
        if exc.errno not in READ_ONLY_ERRNOS:
            raise storage_error(root, "open its lock file", exc) from exc
    try:
        return open(path)  # flock works on a read-only handle
    except OSError:
        return None


def storage_error(root: Path, action: str, exc: OSError) -> StorageError:
    """The :class:`StorageError` for the store at ``root`` failing to do ``action``."""
    if exc.errno in DISK_FULL_ERRNOS:
        hint = "free space on its disk or lower the store's size cap"
    else:
        hint = f"make {root} writable"
    return StorageError(
        f"the context store {root} could not {action}: {exc.strerror or exc} "
        f"({hint}; nothing was half-written)",
        exc.errno,
    )


@contextlib.contextmanager
def storage_errors(root: Path, action: str) -> Iterator[None]:
    """Raise a disk's refusal (``OSError``) as :class:`StorageError` naming the store."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):  # (ContextNotFoundError is one)
            raise
        raise storage_error(root, action, exc) from exc
