"""Content addresses of compressed contexts in a store: what a context id is made of."""

from __future__ import annotations

import hashlib
import re
from typing import Any

ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def context_id(
    method: str,
    base_model: str,
    compressor: str,
    text: str,
    budget: int | None = None,
    *,
    extendable: bool = False,
    extends: str | None = None,
) -> str:
    """The content address of ``text`` compressed by the compressor with these fingerprints
    (within a token ``budget``, if given: the same text at two budgets is two contexts; kept
    ``extendable``, i.e. with its open tail; or as ``text`` appended to the context ``extends``)."""
    h = hashlib.sha256()
    parts = (method, base_model, compressor) + (() if budget is None else (f"budget={budget}",))
    parts += ("extendable",) if extendable else ()
    parts += () if extends is None else (f"extends={extends}",)
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    h.update(text.encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def id_for(compressor: Any, text: str, budget: int | None = None) -> str:
    """:func:`context_id` for a :class:`~ctxcompress.Compressor` object."""
    return context_id(
        compressor.method, compressor.base_fingerprint, compressor.fingerprint, text, budget
    )


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.match(value))
