"""ASGI middleware that gives each request a deadline and stops its work when its client goes away.

Neither uvicorn nor Litestar cancels a handler whose client disconnected, so a client that gave up would
still have its texts embedded. Here the handler runs as a task; once the request body has been read, the
connection is watched, and an `http.disconnect` before the response is complete cancels the task: the
micro-batcher then drops the request's queued texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from akidb.deadline import request_deadline

log = logging.getLogger(__name__)

TIMEOUT_HEADER = b"x-request-timeout-ms"


def _timeout_ms(scope: Scope) -> tuple[float | None, str | None]:
    """The X-Request-Timeout-Ms header's value, or an error message if it is not a positive number."""
    for name, value in scope.get("headers", ()):
        if name == TIMEOUT_HEADER:
            text = value.decode("latin-1").strip()
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number <= 0:
                return None, f"X-Request-Timeout-Ms: expected a positive number of milliseconds, got '{text}'"
            return number, None
    return None, None


async def _reject(send: Send, status: int, detail: str, field: str) -> None:
    body = json.dumps(
        {"status_code": status, "detail": detail, "extra": {"code": "invalid_header", "field": field}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def request_scope_middleware(default_timeout_ms: float) -> type:
    """The middleware class, with `embedding.request_timeout_ms` as the deadline of requests that send
    no X-Request-Timeout-Ms header (0: none)."""

    class RequestScopeMiddleware:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await self.app(scope, receive, send)
                return
            timeout_ms, problem = _timeout_ms(scope)
            if problem is not None:
                await _reject(send, 400, problem, "X-Request-Timeout-Ms")
                return
            timeout_ms = timeout_ms or default_timeout_ms or None
            deadline = time.monotonic() + timeout_ms / 1000.0 if timeout_ms else None
            await _DisconnectWatch(self.app, scope, receive, send, deadline).run()

    return RequestScopeMiddleware


class _DisconnectWatch:
    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, deadline: float | None) -> None:
        self.app, self.scope, self.receive, self.send = app, scope, receive, send
        self.deadline = deadline
        self.body_read = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.response_done = False

    async def run(self) -> None:
        token = request_deadline.set(self.deadline)
        try:
            handler = asyncio.ensure_future(self.app(self.scope, self._receive, self._send))
        finally:
            request_deadline.reset(token)
        watcher = asyncio.create_task(self._watch(handler))
        try:
            await handler
        except asyncio.CancelledError:
            if not self.disconnected.is_set():
                raise  # the server is cancelling us, not the client leaving
            log.info("client left %s %s before its response; its work was dropped", *self._method_and_path())
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _method_and_path(self) -> tuple[str, str]:
        return str(self.scope.get("method", "")), str(self.scope.get("path", ""))

    async def _receive(self) -> ReceiveMessage:
        if self.body_read.is_set():
            # The body is in: the only message left to give is the disconnect, which the watcher reads.
            await self.disconnected.wait()
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected.set()
        elif not message.get("more_body", False):
            self.body_read.set()
        return message

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_done = True
        await self.send(message)

    async def _watch(self, handler: asyncio.Future[None]) -> None:
        await self.body_read.wait()
        message = await self.receive()
        if message["type"] == "http.disconnect" and not self.response_done:
            self.disconnected.set()
            handler.cancel()
