"""The service's errors: every failure is JSON ``{"error": {"type": ..., "message": ...}}``
with a status code; library errors map to 4xx, a disk that refuses a write to 507 (full) or
503 (read-only, I/O error; with Retry-After)."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    ContextMismatchError,
    ContextNotFoundError,
    ContextTooLongError,
    CorruptFileError,
    CtxCompressError,
    StorageError,
)
from .batcher import BatcherStoppedError, QueueFullError

log = logging.getLogger(__name__)


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


STATUS_TYPES = {
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
    507: "insufficient_storage",
}


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def from_library_error(exc: CtxCompressError) -> APIError:
    if isinstance(exc, ContextNotFoundError):
        return APIError(404, "not_found", str(exc))
    if isinstance(exc, ContextTooLongError):
        return APIError(413, "context_too_long", str(exc))
    if isinstance(exc, ContextMismatchError):
        return APIError(409, "context_mismatch", str(exc))
    if isinstance(exc, CorruptFileError):
        return APIError(500, "corrupt_context", str(exc))
    if isinstance(exc, StorageError):  # the disk refused a write; nothing was half-written
        if exc.disk_full:
            return APIError(507, "insufficient_storage", str(exc))
        return APIError(503, "store_unavailable", str(exc), {"Retry-After": "30"})
    return APIError(422, "invalid_input", str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Every failure as JSON ``{"error": {"type", "message"}}`` with its status code."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(CtxCompressError)
    async def _library_error(request: Request, exc: CtxCompressError) -> JSONResponse:
        err = from_library_error(exc)
        return error_response(err.status, err.kind, err.message, err.headers)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(BatcherStoppedError)
    async def _stopped(request: Request, exc: BatcherStoppedError) -> JSONResponse:
        return error_response(503, "unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = STATUS_TYPES.get(exc.status_code, "error")
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
