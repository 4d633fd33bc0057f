"""The HTTP service: compress documents once, answer many questions against them.

``create_app(compressor, store_dir)`` returns a FastAPI app; ``ctxcompress serve`` runs it
with uvicorn. Endpoints (see ``docs/serving.md``):

    POST   /v1/contexts                 compress one or more documents -> ids
    GET    /v1/contexts                 list stored contexts
    GET    /v1/contexts/{id}            metadata of one context
    DELETE /v1/contexts/{id}            remove it
    POST   /v1/contexts/{id}/answers    answer a batch of questions
    POST   /v1/chat/completions         OpenAI-compatible, with an extra ``context_id``
    GET    /v1/models                   the one served model (OpenAI-compatible)
    GET    /healthz                     liveness (never needs the token)
    GET    /metrics                     Prometheus text format

The model is used by one worker thread only (:mod:`.batcher`); request handlers validate,
queue and wait. Every error is JSON: ``{"error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..errors import StorageError
from ..methods import Compressor
from ..version import __version__
from .api_errors import install_error_handlers
from .batcher import Batcher
from .middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from .routes import router
from .schemas import ServeLimits
from .service import Service
from .store import ContextStore

log = logging.getLogger(__name__)


def create_app(
    compressor: Compressor,
    store_dir: str | Path,
    *,
    token: str | None = None,
    limits: ServeLimits | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_store_bytes: int | None = None,
    store_quantize: str | None = None,
) -> FastAPI:
    """The service app over a compressor and a store folder.

    Args:
        compressor: a :class:`~ctxcompress.Compressor`; the app's worker thread is its only
            user while the app runs (do not call it from elsewhere meanwhile).
        store_dir: the context store folder (created if missing; reopened after a restart).
        token: if set, every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>``.
        limits: request limits (:class:`ServeLimits`).
        max_batch, max_wait_ms, max_queue: dynamic batching (:class:`~.batcher.Batcher`).
        max_store_bytes: LRU size cap of the store (``None``: none).
        store_quantize: ``"int8"``: store contexts quantized (see :class:`ContextStore`).
    """
    limits = limits or ServeLimits()
    store = ContextStore(store_dir, max_bytes=max_store_bytes, quantize=store_quantize)
    batcher = Batcher(compressor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    service = Service(compressor, store, batcher, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)
            try:
                store.flush()
            except StorageError as exc:  # a read-only or full disk: lose access times only
                log.warning("%s; access times since the last write are lost", exc)

    app = FastAPI(
        title="ctxcompress",
        version=__version__,
        description="Compress documents once, answer many questions against them.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.store = store
    app.state.batcher = batcher

    install_error_handlers(app)

    # ------------------------------------------------------------------ middleware
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=limits.max_body_bytes,
        max_drain_bytes=limits.max_drain_bytes,
        drain_seconds=limits.drain_seconds,
    )
    if token:
        app.add_middleware(AuthMiddleware, token=token)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: sees all

    app.include_router(router)
    return app
