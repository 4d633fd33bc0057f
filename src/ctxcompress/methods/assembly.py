"""Contexts as building blocks (issue 20): composing several (:mod:`.composition`) and
growing one (:mod:`.extension`), for a :class:`~ctxcompress.methods.base.Compressor`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..context import CompressedContext
from ..errors import InvalidInputError
from .composition import compose_contexts
from .extension import extend_ids


class AssemblyMixin:
    """:meth:`compose` and :meth:`extend` for a compressor."""

    method: str
    _encode: Any

    supports_extension = False
    """Whether :meth:`extend` works: chunks encoded independently with global positions."""

    def _check_extensible(self) -> None:
        if not self.supports_extension:
            raise InvalidInputError(
                f"{self.method} contexts cannot be extended: growing a context is implemented "
                "for SAC, whose chunks are encoded independently; compress the whole text again"
            )

    def extend(self, ctx: CompressedContext, text: str) -> CompressedContext:
        """``ctx`` grown by ``text`` (which continues the document: no BOS or prefix),
        compressing only what was added; exact when ``ctx`` was made with ``keep_tail=True``
        (see :mod:`.extension`)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("extend needs a non-empty text to add")
        return self.extend_ids(ctx, self._encode(text))

    def extend_ids(self, ctx: CompressedContext, new_ids: Sequence[int]) -> CompressedContext:
        """:meth:`extend` for token ids."""
        self._check_extensible()
        return extend_ids(self, ctx, new_ids)  # type: ignore[arg-type]

    def compose(self, contexts: Sequence[CompressedContext]) -> CompressedContext:
        """Several contexts of this compressor read as one, in order: each moved to follow
        the ones before it (KV keys re-rotated, exact; see :mod:`.composition`)."""
        return compose_contexts(self, contexts)  # type: ignore[arg-type]
