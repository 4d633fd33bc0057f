"""Request limits and request bodies of the HTTP service (pydantic models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInputError


@dataclass
class ServeLimits:
    """Request limits; each violation is a 4xx with a JSON error."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body (413)."""
    max_drain_bytes: int = 64 * 1024 * 1024
    """An oversize body up to this size is read and discarded before its 413 goes out, so
    that clients which send the whole body before reading (Python's standard library,
    httpx) read the 413 instead of a broken pipe, and the connection stays usable; a larger
    one gets the 413 at once and the connection is closed."""
    drain_seconds: float = 10.0
    """At most this long is spent reading an oversize body (a slow or endless upload)."""
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

    def __post_init__(self) -> None:
        if not isinstance(self.max_drain_bytes, int) or self.max_drain_bytes < 0:
            raise InvalidInputError(
                f"max_drain_bytes must be an integer >= 0 (0: never read an oversize body), "
                f"got {self.max_drain_bytes!r}"
            )
        if not self.drain_seconds > 0:
            raise InvalidInputError(f"drain_seconds must be > 0, got {self.drain_seconds!r}")


# --------------------------------------------------------------------------- request bodies


class ContextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[str] | None = Field(None, description="Texts to compress.")
    text: str | None = Field(None, description="One text to compress (instead of documents).")
    budget: int | None = Field(
        None,
        ge=1,
        description="At most this many entries per context: the ratio is chosen per "
        "document (never below the compressor's trained ratio) and shown as 'ratio'.",
    )
    extendable: bool = Field(
        False,
        description="Keep the last partial chunk's tokens so that POST .../extend grows the "
        "context exactly as compressing the whole text would (SAC; the stored context then "
        "holds up to one chunk of the document's tokens).",
    )


class ExtendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="Text that continues the document (no BOS or prefix).")


class AnswersRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: list[str] | None = None
    question: str | None = None
    max_new_tokens: int | None = None
    stop: str | list[str] | None = None


class ComposedAnswersRequest(AnswersRequest):
    context_ids: list[str] = Field(
        description="Stored contexts read as one, in this order (Compressor.compose: each "
        "placed after the ones before it, keys re-rotated; no re-encoding)."
    )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """OpenAI's chat-completions body plus ``context_id`` (or ``context_ids``, composed in
    order); other OpenAI fields are accepted and ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage]
    context_id: str | None = None
    context_ids: list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


# --------------------------------------------------------------------------- responses


class ErrorDetail(BaseModel):
    type: str = Field(description="A machine-readable kind, e.g. context_too_long.")
    message: str = Field(description="What was wrong and what to do about it.")


class ErrorBody(BaseModel):
    """Every error the service returns: ``{"error": {"type": ..., "message": ...}}``."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not valid JSON."),
    401: _error("A token is configured and the request lacks it (every path but /healthz)."),
    404: _error("No such context or endpoint."),
    405: _error("The method is not allowed on this path."),
    413: _error("The body, a document, a question or context + answer is too long."),
    422: _error("The request is well-formed JSON but invalid (a field, a limit)."),
    500: _error("An internal error (a bug): the message names the exception type."),
    503: _error(
        "Overloaded (queue full), shutting down, or the context store cannot be written "
        "(read-only, I/O error): retry after Retry-After seconds."
    ),
    507: _error("The context store's disk is full: nothing was stored; free space and retry."),
}
"""The error responses every endpoint may give, documented in the OpenAPI schema."""
