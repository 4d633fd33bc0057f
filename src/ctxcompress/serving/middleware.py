"""ASGI middleware of the service: request-body limit, bearer-token auth, request metrics."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from .api_errors import error_response
from .metrics import ServiceMetrics

# --------------------------------------------------------------------------- ASGI middleware


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``, *readable by every client* (issue 41).

    A server that answers 413 and closes while the client is still sending makes most clients
    (Python's standard library, httpx) fail with a broken pipe before they read the answer.
    So an oversize body is first read and discarded — up to ``max_drain_bytes`` and
    ``drain_seconds``, so an endless body cannot hold a worker — then answered; a body drained
    to its end leaves the keep-alive connection usable. Beyond the cap (or a Content-Length
    over it) the 413 goes out at once with ``Connection: close``. A client that sent
    ``Expect: 100-continue`` has sent no body yet: it gets the 413 at once and sends none.
    """

    def __init__(
        self, app: Any, max_bytes: int, max_drain_bytes: int = 0, drain_seconds: float = 10.0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_drain_bytes = max_drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_bytes:
            waits = headers.get(b"expect", b"").lower() == b"100-continue"
            drained = not waits and declared <= self.max_drain_bytes
            drained = drained and await self._drain(receive, 0)
            await self._refuse(scope, receive, send, close=not (waits or drained))
            return
        received = 0
        started = too_large = False
        drained = True

        async def limited_receive() -> dict:
            # The app's own error handlers turn the exception into the 413 (so it may never
            # reach the except below): drain before raising, and close the connection in
            # tracking_send when the rest of the body was left unread.
            nonlocal received, too_large, drained
            msg = await receive()
            if msg["type"] == "http.request" and not too_large:
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    if msg.get("more_body", False):
                        drained = await self._drain(receive, received)
                    raise _BodyTooLarge(self.max_bytes)
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                if too_large and not drained:
                    msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, close=not drained)

    async def _drain(self, receive: Any, already: int) -> bool:
        """Read and discard the rest of the body; True when it ended within the caps."""
        total = already
        try:
            async with asyncio.timeout(self.drain_seconds):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":  # the client went away
                        return False
                    total += len(msg.get("body", b""))
                    if not msg.get("more_body", False):
                        return True
                    if total > self.max_drain_bytes:
                        return False
        except TimeoutError:
            return False

    async def _refuse(self, scope: dict, receive: Any, send: Any, *, close: bool) -> None:
        message = f"the request body exceeds the limit of {self.max_bytes} bytes"
        headers = {"Connection": "close"} if close else None
        await error_response(413, "payload_too_large", message, headers)(scope, receive, send)


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
