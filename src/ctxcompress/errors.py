"""Exceptions with messages that say what was wrong and what to do about it.

Every error raised on bad user input derives from :class:`CtxCompressError` (itself a
``ValueError``), so callers can catch one type; the service maps them to 4xx responses.
"""

from __future__ import annotations

import errno as errno_codes

DISK_FULL_ERRNOS = (errno_codes.ENOSPC, errno_codes.EDQUOT, errno_codes.EFBIG)
"""The operating system's ways of saying "no room": a full disk, a quota, a file too big."""


class CtxCompressError(ValueError):
    """Base class of every user-facing error of ctxcompress."""


class InvalidInputError(CtxCompressError):
    """A text, question, option or token count that cannot be used as given."""


class ContextTooLongError(InvalidInputError):
    """A context (plus question and answer) needs more positions than the model has."""


class PromptTooLongError(InvalidInputError):
    """A question prompt is over a caller's token limit (e.g. the service's)."""


class ModelLoadError(CtxCompressError):
    """A base model or compressor could not be loaded (missing package, file or cache)."""


class ContextMismatchError(CtxCompressError):
    """A compressed context was made by another method, compressor or base model."""


class ContextNotFoundError(CtxCompressError, FileNotFoundError):
    """A ``.ctx`` file (or saved compressor) does not exist."""


class CorruptFileError(CtxCompressError):
    """A ``.ctx`` file or a saved compressor is unreadable or inconsistent."""


class StorageError(CtxCompressError, OSError):
    """The disk refused a write: full (``ENOSPC``), read-only, or another I/O error.

    ``errno`` is the operating system's error number; nothing was half-written (every
    writer is atomic), so freeing space or making the folder writable and retrying is safe.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL_ERRNOS
