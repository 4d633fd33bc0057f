"""The service's endpoints: an :class:`~fastapi.APIRouter` whose handlers get the shared
:class:`~.service.Service` as a dependency (``request.app.state.service``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
)
from starlette.concurrency import run_in_threadpool

from ..context import CompressedContext
from ..errors import (
    CtxCompressError,
)
from ..version import __version__
from .api_errors import APIError, from_library_error
from .batcher import Answer, QueueFullError
from .ids import is_valid_id
from .schemas import (
    COMMON_ERRORS,
    AnswersRequest,
    ChatMessage,
    ChatRequest,
    ComposedAnswersRequest,
    ContextsRequest,
    ErrorBody,
    ExtendRequest,
)
from .service import Service
from .streaming import TextStream


def get_service(request: Request) -> Service:
    """The app's :class:`Service` (set by :func:`~.app.create_app`)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
router = APIRouter(responses=COMMON_ERRORS)
_conflict = {
    "model": ErrorBody,
    "description": "The context was made by another compressor or base model.",
}


@router.get("/healthz", responses={503: {"description": "The model worker is not running."}})
async def healthz(service: ServiceDep) -> JSONResponse:
    ok = service.batcher.running
    return JSONResponse(
        {
            "status": "ok" if ok else "unavailable",
            "version": __version__,
            "model": service.model_name,
            "method": service.method,
            "queue_depth": service.batcher.depth,
        },
        status_code=200 if ok else 503,
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(service: ServiceDep) -> PlainTextResponse:
    body = await run_in_threadpool(service.metrics.render)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(service: ServiceDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": service.model_name, "object": "model", "owned_by": "ctxcompress"}],
    }


@router.post(
    "/v1/contexts",
    status_code=201,
    responses={200: {"description": "Every document was stored already (nothing created)."}},
)
async def create_contexts(body: ContextsRequest, service: ServiceDep) -> JSONResponse:
    if (body.text is None) == (body.documents is None):
        raise APIError(422, "invalid_request", "give either 'text' or 'documents' (a list)")
    docs = [body.text] if body.text is not None else list(body.documents or [])
    service.check_document_count(len(docs), "documents")
    tokenized = []
    for i, doc in enumerate(docs):
        if not doc.strip():
            raise APIError(422, "invalid_request", f"document {i} is empty")
        tokenized.append(service.document_ids(doc))
        n = len(tokenized[-1])
        if n > service.max_context_tokens:
            raise APIError(
                413,
                "context_too_long",
                f"document {i} has {n} tokens; the limit is {service.max_context_tokens}. "
                "Split it into parts and compress each.",
            )
        if body.budget is not None:
            service.check_budget(i, n, body.budget)
    if body.extendable:
        service.check_extensible()
    ids = [service.context_id(d, budget=body.budget, extendable=body.extendable) for d in docs]
    missing: dict[str, tuple[str, list[int]]] = {}
    for cid, doc, doc_ids in zip(ids, docs, tokenized, strict=True):
        if cid not in service.store and cid not in missing:
            missing[cid] = (doc, doc_ids)
    created: set[str] = set()
    entries: dict[str, dict[str, Any]] = {}
    if missing:
        try:
            future = service.batcher.compress(
                [doc_ids for _, doc_ids in missing.values()], body.budget, body.extendable
            )
        except QueueFullError as exc:
            service.metrics.rejected.inc()
            raise APIError(
                503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None
        contexts = (await service.wait([future]))[0]
        for (cid, (doc, _)), ctx in zip(missing.items(), contexts, strict=True):
            ctx.meta["chars"] = len(doc)
            entries[cid], new = await run_in_threadpool(service.store.put, cid, ctx)
            if new:
                created.add(cid)
    out = []
    for cid in ids:
        entry = entries.get(cid) or await run_in_threadpool(service.store.info, cid)
        out.append({**_public(entry), "created": cid in created})
    return JSONResponse({"contexts": out}, status_code=201 if created else 200)


@router.post(
    "/v1/contexts/{context_id}/extend",
    status_code=201,
    responses={200: {"description": "This extension was stored already."}, 409: _conflict},
)
async def extend_context(context_id: str, body: ExtendRequest, service: ServiceDep) -> JSONResponse:
    """A new context: the stored one grown by ``text`` (only the new text is compressed;
    exact for contexts created with ``extendable``). The original stays as it was."""
    service.check_extensible()
    if not body.text.strip():
        raise APIError(422, "invalid_request", "'text' is empty: nothing to add")
    new_id = service.context_id(body.text, extends=context_id)
    if new_id in service.store:
        entry = await run_in_threadpool(service.store.info, new_id)
        return JSONResponse({**_public(entry), "created": False, "extends": context_id})
    parent = await service.load_context(context_id)
    # On the model thread, like every use of the compressor; library errors (too long, ...)
    # and a full queue become their JSON errors in api_errors.
    future = service.batcher.call(lambda: service.compressor.extend(parent, body.text))
    (grown,) = await service.wait([future])
    grown.meta["chars"] = (parent.meta.get("chars") or 0) + len(body.text)
    entry, created = await run_in_threadpool(service.store.put, new_id, grown)
    body_out = {**_public(entry), "created": created, "extends": context_id}
    return JSONResponse(body_out, status_code=201 if created else 200)


@router.get("/v1/contexts")
async def list_contexts(
    service: ServiceDep, limit: int = Query(100, ge=1, le=100_000)
) -> dict[str, Any]:
    entries = await run_in_threadpool(service.store.list)
    return {
        "contexts": [_public(e) for e in entries[:limit]],
        "total": len(entries),
        "bytes": sum(int(e["bytes"]) for e in entries),
    }


@router.get("/v1/contexts/{context_id}", responses={409: _conflict})
async def get_context(context_id: str, service: ServiceDep) -> dict[str, Any]:
    if not is_valid_id(context_id):
        raise APIError(404, "not_found", f"no context with id {context_id!r}")
    entry = await run_in_threadpool(service.store.info, context_id)
    compatible = (
        entry["method"] == service.method
        and entry["base_model"] == service.base_fingerprint
        and entry["compressor"] == service.fingerprint
    )
    return {**_public(entry), "compatible": compatible}


@router.delete("/v1/contexts/{context_id}")
async def delete_context(context_id: str, service: ServiceDep) -> dict[str, Any]:
    if not await run_in_threadpool(service.store.delete, context_id):
        raise APIError(404, "not_found", f"no context with id {context_id!r}")
    return {"id": context_id, "deleted": True}


@router.post("/v1/contexts/{context_id}/answers", responses={409: _conflict})
async def answers(context_id: str, body: AnswersRequest, service: ServiceDep) -> dict[str, Any]:
    ids = {"context_id": context_id}
    return await _answer(body, service, ids, lambda: service.load_context(context_id))


@router.post("/v1/answers", responses={409: _conflict})
async def composed_answers(body: ComposedAnswersRequest, service: ServiceDep) -> dict[str, Any]:
    """Answers against several stored contexts read as one (composed in order)."""
    ids = {"context_ids": body.context_ids}
    return await _answer(body, service, ids, lambda: service.load_contexts(body.context_ids))


async def _answer(
    body: AnswersRequest,
    service: Service,
    ids: dict[str, Any],
    load: Callable[[], Awaitable[CompressedContext]],
) -> dict[str, Any]:
    if (body.question is None) == (body.questions is None):
        raise APIError(422, "invalid_request", "give either 'question' or 'questions'")
    questions = [body.question] if body.question is not None else list(body.questions or [])
    new = service.check_new_tokens(body.max_new_tokens, "max_new_tokens")
    stops = service.check_stop(body.stop)
    service.check_question_count(questions)  # before loading the context
    ctx = await load()
    plan = service.plan(ctx, questions, new)
    start = time.perf_counter()
    results: list[Answer] = await service.wait(service.submit_answers(plan, stops))
    service.metrics.generated_tokens.inc(sum(r.tokens for r in results))
    return {
        **ids,
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


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {
            "content": {"application/json": {}, "text/event-stream": {}},
            "description": "A chat completion, or with stream=true its server-sent events.",
        },
        409: _conflict,
    },
)
async def chat_completions(body: ChatRequest, service: ServiceDep) -> Any:
    if bool(body.context_id) == (body.context_ids is not None):
        raise APIError(
            422,
            "invalid_request",
            "give 'context_id' (or 'context_ids' to compose several, in order): compress the "
            "document with POST /v1/contexts and pass the id (OpenAI clients: "
            "extra_body={'context_id': ...})",
        )
    if body.n != 1:
        raise APIError(422, "invalid_request", "only n=1 is supported")
    question = _last_user_message(body.messages)
    requested = body.max_completion_tokens or body.max_tokens
    new = service.check_new_tokens(requested, "max_tokens")
    stops = service.check_stop(body.stop)
    if body.context_ids is not None:
        ctx, ids = await service.load_contexts(body.context_ids), {"context_ids": body.context_ids}
    else:
        ctx, ids = await service.load_context(body.context_id), {"context_id": body.context_id}
    plan = service.plan(ctx, [question], new)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = body.model or service.model_name
    prompt_tokens = ctx.compressed_length + len(plan.prompt_ids[0])

    def usage(tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        }

    if not body.stream:
        (result,) = await service.wait(service.submit_answers(plan, stops))
        service.metrics.generated_tokens.inc(result.tokens)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            **ids,
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

    (future,) = service.submit_answers(plan, stops, on_token)
    future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", f)))

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
        text = TextStream(service.compressor.decode, stops)
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
                    from_library_error(exc)
                    if isinstance(exc, CtxCompressError)
                    else APIError(500, "internal_error", f"internal error: {type(exc).__name__}")
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


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "method",
        "kind",
        "original_length",
        "compressed_length",
        "ratio",
        "budget",
        "extendable",
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


__all__ = ["ServiceDep", "get_service", "router"]
