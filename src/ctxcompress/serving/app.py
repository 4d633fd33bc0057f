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

import asyncio
import contextlib
import copy
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..context import CompressedContext
from ..errors import (
    ContextMismatchError,
    ContextNotFoundError,
    ContextTooLongError,
    CorruptFileError,
    CtxCompressError,
)
from ..models import max_positions
from ..version import __version__
from .batcher import Answer, AnswerJob, Batcher, BatcherStoppedError, QueueFullError
from .store import ContextStore, is_valid_id
from .store import context_id as make_context_id

log = logging.getLogger(__name__)


@dataclass
class ServeLimits:
    """Request limits; each violation is a 4xx with a JSON error."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body (413)."""
    max_documents: int = 16
    """Documents per ``POST /v1/contexts`` (422)."""
    max_context_tokens: int | None = None
    """Tokens per document (413); ``None``: what the base model's positions allow."""
    max_questions: int = 64
    """Questions per ``POST /v1/contexts/{id}/answers`` (422)."""
    max_question_tokens: int = 512
    """Tokens per question, with the question template (413)."""
    max_new_tokens: int = 256
    """Largest ``max_new_tokens`` / ``max_tokens`` a request may ask for (422)."""
    max_stop: int = 8
    """Stop strings per request (422)."""


class APIError(Exception):
    """An error with an HTTP status, shown as ``{"error": {"type", "message"}}``."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers


_STATUS_TYPES = {
    400: "invalid_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "context_mismatch",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "overloaded",
}


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def _from_library_error(exc: CtxCompressError) -> APIError:
    if isinstance(exc, ContextNotFoundError):
        return APIError(404, "not_found", str(exc))
    if isinstance(exc, ContextTooLongError):
        return APIError(413, "context_too_long", str(exc))
    if isinstance(exc, ContextMismatchError):
        return APIError(409, "context_mismatch", str(exc))
    if isinstance(exc, CorruptFileError):
        return APIError(500, "corrupt_context", str(exc))
    return APIError(422, "invalid_input", str(exc))


# --------------------------------------------------------------------------- request bodies


class ContextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[str] | None = Field(None, description="Texts to compress.")
    text: str | None = Field(None, description="One text to compress (instead of documents).")


class AnswersRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: list[str] | None = None
    question: str | None = None
    max_new_tokens: int | None = None
    stop: str | list[str] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """OpenAI's chat-completions body plus ``context_id``; other OpenAI fields are accepted
    and ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage]
    context_id: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


# --------------------------------------------------------------------------- ASGI middleware


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from Content-Length, else while reading."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body exceeds the limit of {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await error_response(413, "payload_too_large", message)(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await error_response(413, "payload_too_large", message)(scope, receive, send)


class AuthMiddleware:
    """Bearer-token check for every path but ``/healthz``."""

    def __init__(self, app: Any, token: str, open_paths: Sequence[str] = ("/healthz",)) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = set(open_paths)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
        if not hmac.compare_digest(given, self.expected):
            reason = "missing" if not given else "wrong"
            response = error_response(
                401,
                "unauthorized",
                f"{reason} bearer token: send the header 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Counts requests by route template, method and status, and times them."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(msg: dict) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


class ServiceMetrics:
    """Prometheus metrics of one app (its own registry, so several apps can share a process)."""

    def __init__(self, store: ContextStore, batcher: Batcher) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ctxcompress_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ctxcompress_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch_size = Histogram(
            "ctxcompress_batch_size",
            "Questions (or documents) per model call.",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ctxcompress_batch_seconds",
            "Seconds per model call.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.generated_tokens = Counter(
            "ctxcompress_generated_tokens", "Tokens generated.", registry=r
        )
        self.rejected = Counter(
            "ctxcompress_queue_rejections", "Requests refused with 503 (queue full).", registry=r
        )
        Gauge("ctxcompress_queue_depth", "Jobs waiting for the model.", registry=r).set_function(
            lambda: batcher.depth
        )
        Gauge("ctxcompress_batch_busy", "Jobs the model is running now.", registry=r).set_function(
            lambda: batcher.busy
        )
        Gauge("ctxcompress_store_contexts", "Stored contexts.", registry=r).set_function(
            lambda: len(store)
        )
        Gauge("ctxcompress_store_bytes", "Bytes of stored context files.", registry=r).set_function(
            lambda: store.total_bytes
        )
        Gauge(
            "ctxcompress_store_max_bytes", "The store's size cap (0: none).", registry=r
        ).set_function(lambda: store.max_bytes or 0)

    def on_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --------------------------------------------------------------------------- streaming text


class TextStream:
    """Turns generated token ids into text deltas whose concatenation is the final answer.

    The final answer is the decoded text cut at the first stop string and stripped, so a
    delta is emitted only for text that can no longer change: leading and trailing whitespace,
    an incomplete UTF-8 character and a possible beginning of a stop string are held back.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = ""

    def _settled(self, text: str) -> str:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            return text[: min(hits)].strip()
        text = text.strip()
        while text.endswith("\ufffd"):
            text = text[:-1]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return text[: len(text) - hold].rstrip()

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._advance(self._settled(text))

    def finish(self, final: str) -> str:
        delta = self._advance(final)
        if self.sent != final:
            log.warning("streamed text diverged from the final answer: %r vs %r", self.sent, final)
        return delta

    def _advance(self, settled: str) -> str:
        if len(settled) > len(self.sent) and settled.startswith(self.sent):
            delta = settled[len(self.sent) :]
            self.sent = settled
            return delta
        return ""


# --------------------------------------------------------------------------- the service


class Service:
    """State shared by the request handlers: compressor facts, store, batcher, metrics."""

    def __init__(
        self,
        compressor: Any,
        store: ContextStore,
        batcher: Batcher,
        limits: ServeLimits,
    ) -> None:
        self.compressor = compressor
        self.store = store
        self.batcher = batcher
        self.limits = limits
        # Fingerprints are fixed while serving (nothing trains): read them once.
        self.method = compressor.method
        self.base_fingerprint = compressor.base_fingerprint
        self.fingerprint = compressor.fingerprint
        self.model_name = f"ctxcompress-{self.method}-{self.fingerprint}"
        self.positions = max_positions(compressor.lm)
        self.max_context_tokens = limits.max_context_tokens or self.positions - 1
        # The worker thread tokenizes with the compressor's tokenizer; handlers (all on the
        # event loop thread) use their own copy, so the two never share one mutable object.
        self.tokenizer = copy.deepcopy(compressor.tokenizer)
        config = compressor.config
        self.context_prefix = config.context_prefix
        bos = self.tokenizer.bos_token_id
        self.bos = [bos] if config.add_bos and bos is not None else []
        self.question_template = config.question_template
        self.metrics = ServiceMetrics(store, batcher)
        batcher.on_batch = self.metrics.on_batch

    # ------------------------------------------------------------------ validation helpers
    def count_context_tokens(self, text: str) -> int:
        ids = self.tokenizer(self.context_prefix + text, add_special_tokens=False).input_ids
        return len(self.bos) + len(ids)

    def question_tokens(self, question: str) -> int:
        prompt = self.question_template.format(question=question)
        return len(self.tokenizer(prompt, add_special_tokens=False).input_ids)

    def check_new_tokens(self, value: int | None, name: str) -> int:
        limit = self.limits.max_new_tokens
        if value is None:
            return min(32, limit)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise APIError(
                422, "invalid_request", f"{name} must be an integer from 1 to {limit}, got {value}"
            )
        return value

    def check_stop(self, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > self.limits.max_stop:
            raise APIError(
                422,
                "invalid_request",
                f"{len(stops)} stop strings; at most {self.limits.max_stop} are allowed",
            )
        return [s for s in stops if s]

    def check_question_count(self, questions: list[str]) -> None:
        limit = self.limits.max_questions
        if not questions:
            raise APIError(422, "invalid_request", "no questions: give 'questions' (a list)")
        if len(questions) > limit:
            raise APIError(
                422,
                "too_many_questions",
                f"{len(questions)} questions in one request; at most {limit} are allowed",
            )

    def check_questions(self, ctx: CompressedContext, questions: list[str], new: int) -> None:
        self.check_question_count(questions)
        for i, q in enumerate(questions):
            if not q.strip():
                raise APIError(422, "invalid_request", f"question {i} is empty")
            n = self.question_tokens(q)
            if n > self.limits.max_question_tokens:
                raise APIError(
                    413,
                    "question_too_long",
                    f"question {i} has {n} tokens; the limit is {self.limits.max_question_tokens}",
                )
            if self.compressor.positions_needed(ctx, n, new) > self.positions:
                raise APIError(
                    413,
                    "context_too_long",
                    f"context ({ctx.original_length} tokens) + question {i} ({n}) + "
                    f"max_new_tokens ({new}) exceed the model's {self.positions} positions",
                )

    async def load_context(self, context_id: str) -> CompressedContext:
        if not is_valid_id(context_id):
            raise APIError(404, "not_found", f"no context with id {context_id!r}")
        ctx = await run_in_threadpool(self.store.get, context_id)
        ctx.check_compatible(
            method=self.method, base_model=self.base_fingerprint, compressor=self.fingerprint
        )
        return ctx

    async def wait(self, futures: Sequence[Any]) -> list[Any]:
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def submit_answers(
        self,
        ctx: CompressedContext,
        questions: Sequence[str],
        new: int,
        stops: Sequence[str],
        on_token: Any = None,
    ) -> list[Any]:
        jobs = [AnswerJob(ctx, q, new, tuple(stops), on_token) for q in questions]
        try:
            return self.batcher.submit(jobs)
        except QueueFullError as exc:
            self.metrics.rejected.inc()
            raise APIError(
                503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None


def create_app(
    compressor: Any,
    store_dir: str | Path,
    *,
    token: str | None = None,
    limits: ServeLimits | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_store_bytes: int | None = None,
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
    """
    limits = limits or ServeLimits()
    store = ContextStore(store_dir, max_bytes=max_store_bytes)
    batcher = Batcher(compressor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
    service = Service(compressor, store, batcher, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)
            store.flush()

    app = FastAPI(
        title="ctxcompress",
        version=__version__,
        description="Compress documents once, answer many questions against them.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.store = store
    app.state.batcher = batcher

    # ------------------------------------------------------------------ errors as JSON
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(CtxCompressError)
    async def _library_error(request: Request, exc: CtxCompressError) -> JSONResponse:
        err = _from_library_error(exc)
        return error_response(err.status, err.kind, err.message)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(BatcherStoppedError)
    async def _stopped(request: Request, exc: BatcherStoppedError) -> JSONResponse:
        return error_response(503, "unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, kind, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            reason = (detail.get("ctx") or {}).get("error", "JSON decode error")
            return error_response(400, "invalid_json", f"the body is not valid JSON: {reason}")
        parts = []
        for e in errors[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------------ middleware
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if token:
        app.add_middleware(AuthMiddleware, token=token)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: sees all

    # ------------------------------------------------------------------ endpoints
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = batcher.running
        return JSONResponse(
            {
                "status": "ok" if ok else "unavailable",
                "version": __version__,
                "model": service.model_name,
                "method": service.method,
                "queue_depth": batcher.depth,
            },
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        body = await run_in_threadpool(service.metrics.render)
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": service.model_name, "object": "model", "owned_by": "ctxcompress"}],
        }

    @app.post("/v1/contexts")
    async def create_contexts(body: ContextsRequest) -> JSONResponse:
        if (body.text is None) == (body.documents is None):
            raise APIError(422, "invalid_request", "give either 'text' or 'documents' (a list)")
        docs = [body.text] if body.text is not None else list(body.documents or [])
        if not docs:
            raise APIError(422, "invalid_request", "'documents' is empty")
        if len(docs) > limits.max_documents:
            raise APIError(
                422,
                "too_many_documents",
                f"{len(docs)} documents in one request; at most {limits.max_documents}",
            )
        for i, doc in enumerate(docs):
            if not doc.strip():
                raise APIError(422, "invalid_request", f"document {i} is empty")
            n = service.count_context_tokens(doc)
            if n > service.max_context_tokens:
                raise APIError(
                    413,
                    "context_too_long",
                    f"document {i} has {n} tokens; the limit is {service.max_context_tokens}. "
                    "Split it into parts and compress each.",
                )
        ids = [
            make_context_id(service.method, service.base_fingerprint, service.fingerprint, d)
            for d in docs
        ]
        missing: dict[str, str] = {}
        for cid, doc in zip(ids, docs, strict=True):
            if cid not in store and cid not in missing:
                missing[cid] = doc
        created: set[str] = set()
        entries: dict[str, dict[str, Any]] = {}
        if missing:
            try:
                future = batcher.compress(list(missing.values()))
            except QueueFullError as exc:
                service.metrics.rejected.inc()
                raise APIError(
                    503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
                ) from None
            contexts = (await service.wait([future]))[0]
            for (cid, doc), ctx in zip(missing.items(), contexts, strict=True):
                ctx.meta["chars"] = len(doc)
                entries[cid], new = await run_in_threadpool(store.put, cid, ctx)
                if new:
                    created.add(cid)
        out = []
        for cid in ids:
            entry = entries.get(cid) or await run_in_threadpool(store.info, cid)
            out.append({**_public(entry), "created": cid in created})
        return JSONResponse({"contexts": out}, status_code=201 if created else 200)

    @app.get("/v1/contexts")
    async def list_contexts(limit: int = Query(100, ge=1, le=100_000)) -> dict[str, Any]:
        entries = await run_in_threadpool(store.list)
        return {
            "contexts": [_public(e) for e in entries[:limit]],
            "total": len(entries),
            "bytes": sum(int(e["bytes"]) for e in entries),
        }

    @app.get("/v1/contexts/{context_id}")
    async def get_context(context_id: str) -> dict[str, Any]:
        if not is_valid_id(context_id):
            raise APIError(404, "not_found", f"no context with id {context_id!r}")
        entry = await run_in_threadpool(store.info, context_id)
        compatible = (
            entry["method"] == service.method
            and entry["base_model"] == service.base_fingerprint
            and entry["compressor"] == service.fingerprint
        )
        return {**_public(entry), "compatible": compatible}

    @app.delete("/v1/contexts/{context_id}")
    async def delete_context(context_id: str) -> dict[str, Any]:
        if not await run_in_threadpool(store.delete, context_id):
            raise APIError(404, "not_found", f"no context with id {context_id!r}")
        return {"id": context_id, "deleted": True}

    @app.post("/v1/contexts/{context_id}/answers")
    async def answers(context_id: str, body: AnswersRequest) -> dict[str, Any]:
        if (body.question is None) == (body.questions is None):
            raise APIError(422, "invalid_request", "give either 'question' or 'questions'")
        questions = [body.question] if body.question is not None else list(body.questions or [])
        new = service.check_new_tokens(body.max_new_tokens, "max_new_tokens")
        stops = service.check_stop(body.stop)
        service.check_question_count(questions)  # before loading the context
        ctx = await service.load_context(context_id)
        service.check_questions(ctx, questions, new)
        start = time.perf_counter()
        results: list[Answer] = await service.wait(
            service.submit_answers(ctx, questions, new, stops)
        )
        service.metrics.generated_tokens.inc(sum(r.tokens for r in results))
        return {
            "context_id": context_id,
            "model": service.model_name,
            "answers": [
                {
                    "question": q,
                    "answer": r.text,
                    "tokens": r.tokens,
                    "finish_reason": r.finish_reason,
                }
                for q, r in zip(questions, results, strict=True)
            ],
            "seconds": round(time.perf_counter() - start, 4),
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> Any:
        if not body.context_id:
            raise APIError(
                422,
                "invalid_request",
                "'context_id' is required: compress the document with POST /v1/contexts and "
                "pass the id (OpenAI clients: extra_body={'context_id': ...})",
            )
        if body.n != 1:
            raise APIError(422, "invalid_request", "only n=1 is supported")
        question = _last_user_message(body.messages)
        requested = body.max_completion_tokens or body.max_tokens
        new = service.check_new_tokens(requested, "max_tokens")
        stops = service.check_stop(body.stop)
        ctx = await service.load_context(body.context_id)
        service.check_questions(ctx, [question], new)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = body.model or service.model_name
        prompt_tokens = ctx.compressed_length + service.question_tokens(question)

        def usage(tokens: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            }

        if not body.stream:
            (result,) = await service.wait(service.submit_answers(ctx, [question], new, stops))
            service.metrics.generated_tokens.inc(result.tokens)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "context_id": body.context_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": usage(result.tokens),
            }

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_token(token: int) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(events.put_nowait, ("token", token))

        (future,) = service.submit_answers(ctx, [question], new, stops, on_token)
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", f))
        )

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            text = TextStream(service.tokenizer, stops)
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await events.get()
                if kind == "token":
                    delta = text.push(value)
                    if delta:
                        yield chunk({"content": delta})
                    continue
                exc = value.exception()
                if exc is not None:
                    err = (
                        _from_library_error(exc)
                        if isinstance(exc, CtxCompressError)
                        else APIError(
                            500, "internal_error", f"internal error: {type(exc).__name__}"
                        )
                    )
                    payload = {"error": {"type": err.kind, "message": err.message}}
                    yield f"data: {json.dumps(payload)}\n\n"
                else:
                    result: Answer = value.result()
                    service.metrics.generated_tokens.inc(result.tokens)
                    delta = text.finish(result.text)
                    if delta:
                        yield chunk({"content": delta})
                    yield chunk({}, result.finish_reason, usage=usage(result.tokens))
                yield "data: [DONE]\n\n"
                return

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "method",
        "kind",
        "original_length",
        "compressed_length",
        "bytes",
        "chars",
        "created",
        "last_access",
        "compressor",
        "base_model",
    )
    return {k: entry.get(k) for k in keys}


def _last_user_message(messages: Sequence[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, list):
            texts = [
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            ]
            content = "\n".join(texts)
        if isinstance(content, str) and content.strip():
            return content
        break
    raise APIError(
        422,
        "invalid_request",
        "the last user message is missing or empty: it is the question asked of the context",
    )


__all__ = ["APIError", "ServeLimits", "TextStream", "create_app"]
