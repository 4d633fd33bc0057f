"""The ctxcompress service: compress documents once, answer many questions over HTTP.

Needs the ``serve`` extra (``pip install 'ctxcompress[serve]'``: FastAPI, uvicorn,
prometheus_client). ``ctxcompress serve`` runs it; see ``docs/serving.md``.

- :mod:`.store`: :class:`ContextStore`, compressed contexts on disk (safetensors + a JSON
  index), content-addressed, with an optional LRU size cap; no web dependencies.
- :mod:`.batcher`: :class:`Batcher`, the one worker thread that owns the model and answers
  queued questions in dynamic batches.
- :mod:`.app`: :func:`create_app`, the FastAPI app and its routes, built from
  :mod:`.service` (the handlers' shared state and checks, through the compressor's public
  API), :mod:`.schemas` (limits, request bodies), :mod:`.api_errors`, :mod:`.middleware`,
  :mod:`.metrics` and :mod:`.streaming` (imported lazily: the store and the batcher work
  without the web packages).
"""

from __future__ import annotations

from typing import Any

from .batcher import Answer, Batcher, BatcherStoppedError, QueueFullError
from .ids import context_id, id_for, is_valid_id
from .store import ContextStore

__all__ = [
    "Answer",
    "Batcher",
    "BatcherStoppedError",
    "ContextStore",
    "QueueFullError",
    "ServeLimits",
    "context_id",
    "create_app",
    "id_for",
    "is_valid_id",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServeLimits":
        from .schemas import ServeLimits

        return ServeLimits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
