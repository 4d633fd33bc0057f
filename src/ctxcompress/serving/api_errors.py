"""The service's errors: every failure is JSON ``{"error": {"type": ..., "message": ...}}``
with a status code; library errors map to 4xx."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import (
    ContextMismatchError,
    ContextNotFoundError,
    ContextTooLongError,
    CorruptFileError,
    CtxCompressError,
)


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
    return APIError(422, "invalid_input", str(exc))
