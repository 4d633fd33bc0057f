"""State and checks shared by the request handlers (:class:`Service`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from ..context import CompressedContext
from ..errors import (
    ContextTooLongError,
    InvalidInputError,
    PromptTooLongError,
)
from ..methods import AnswerPlan, Compressor
from .api_errors import APIError
from .batcher import AnswerJob, Batcher, QueueFullError
from .ids import context_id as make_context_id
from .ids import is_valid_id
from .metrics import ServiceMetrics
from .schemas import ServeLimits
from .store import ContextStore

# --------------------------------------------------------------------------- the service


class Service:
    """State shared by the request handlers: compressor facts, store, batcher, metrics.

    Everything about the model goes through the compressor's public API (``context_ids``,
    ``plan``, ``max_context_tokens``, ``decode``): the service holds no tokenizer of its own
    and repeats none of the compressor's limit checks."""

    def __init__(
        self,
        compressor: Compressor,
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
        self.versions = compressor.versions
        self.model_name = f"ctxcompress-{self.method}-{self.fingerprint}"
        self.max_context_tokens = limits.max_context_tokens or compressor.max_context_tokens
        self.metrics = ServiceMetrics(store, batcher)
        batcher.on_batch = self.metrics.on_batch

    # ------------------------------------------------------------------ validation helpers
    def document_ids(self, text: str) -> list[int]:
        """A document's token ids, as the compressor reads it (counted against the limit
        here, then compressed as they are: tokenized once)."""
        return self.compressor.context_ids(text)

    def check_budget(self, index: int, length: int, budget: int) -> None:
        """Refuse (422) a token budget this document cannot be compressed into, before it
        is queued (arithmetic only: safe beside the model thread)."""
        try:
            self.compressor.ratio_for_budget(length, budget)
        except InvalidInputError as exc:
            raise APIError(422, "invalid_budget", f"document {index}: {exc}") from None

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

    def context_id(self, text: str, **options: Any) -> str:
        """The content address of ``text`` under this compressor (``budget``, ``extendable``,
        ``extends``: see :func:`~.ids.context_id`)."""
        return make_context_id(
            self.method, self.base_fingerprint, self.fingerprint, text, **options
        )

    def check_extensible(self) -> None:
        if not self.compressor.supports_extension:
            raise APIError(
                422, "invalid_request", f"{self.method} contexts cannot be extended (SAC only)"
            )

    def check_document_count(self, count: int, what: str) -> None:
        """``what`` (documents, context ids) of one request: at least one, at most
        ``max_documents``."""
        if not count:
            raise APIError(422, "invalid_request", f"no {what}: give at least one")
        if count > self.limits.max_documents:
            raise APIError(
                422,
                "too_many_documents",
                f"{count} {what} in one request; at most {self.limits.max_documents}",
            )

    def plan(self, ctx: CompressedContext, questions: list[str], new: int) -> AnswerPlan:
        """The compressor's plan for these questions (tokenized, every limit checked), or
        the API error that says which question cannot be answered and why."""
        self.check_question_count(questions)
        try:
            return self.compressor.plan(
                ctx, questions, new, max_question_tokens=self.limits.max_question_tokens
            )
        except PromptTooLongError as exc:
            raise APIError(413, "question_too_long", str(exc)) from None
        except ContextTooLongError as exc:
            raise APIError(413, "context_too_long", str(exc)) from None
        except InvalidInputError as exc:
            raise APIError(422, "invalid_request", str(exc)) from None

    async def load_context(self, context_id: str) -> CompressedContext:
        if not is_valid_id(context_id):
            raise APIError(404, "not_found", f"no context with id {context_id!r}")
        ctx = await run_in_threadpool(self.store.get, context_id)
        ctx.check_compatible(
            method=self.method,
            base_model=self.base_fingerprint,
            compressor=self.fingerprint,
            versions=self.versions,
        )
        return ctx

    async def load_contexts(self, context_ids: Sequence[str]) -> CompressedContext:
        """The stored contexts composed in order (:meth:`Compressor.compose`), or the API
        error that says which id or what about the composition is wrong."""
        self.check_document_count(len(context_ids), "context ids")
        contexts = [await self.load_context(c) for c in context_ids]
        # A composition too long for the model is a ContextTooLongError: 413 (api_errors).
        return await run_in_threadpool(self.compressor.compose, contexts)

    async def wait(self, futures: Sequence[Any]) -> list[Any]:
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def submit_answers(
        self, plan: AnswerPlan, stops: Sequence[str], on_token: Any = None
    ) -> list[Any]:
        jobs = [AnswerJob(plan.rows([i]), tuple(stops), on_token) for i in range(len(plan))]
        try:
            return self.batcher.submit(jobs)
        except QueueFullError as exc:
            self.metrics.rejected.inc()
            raise APIError(
                503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None
