"""Hold the app's shutdown until running requests have unwound (SIGTERM).

uvicorn stops accepting on SIGTERM, waits up to ``SHUTDOWN_GRACE_S`` for running responses,
cancels the rest and then shuts the app down at once, while the cancelled requests may still be
closing their upstream request and logging their row. :class:`DrainBeforeShutdown` counts
running requests and delays ``lifespan.shutdown`` (bounded) until none is left.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve import errors
from llmserve.api.errors import send_error

log = logging.getLogger(__name__)

#: How long the app's shutdown waits for requests that are still unwinding. They were either
#: finished or cancelled by uvicorn's grace period, so this is a safety bound, not a grace.
DRAIN_TIMEOUT_S = 5.0


class DrainBeforeShutdown:
    """Counts running HTTP requests; ``lifespan.shutdown`` waits (bounded) until none is left.

    Without it the runtime (and the request-log writer) could close before a request cancelled
    at the end of the grace period has logged its row.
    """

    def __init__(self, app: ASGIApp, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._draining(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.running += 1
        self._idle.clear()
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            # Only uvicorn cancels a request task: the shutdown grace period ran out. Say so
            # with a 503 instead of uvicorn's 500, unless the response has already begun.
            if not await _try_send_shutting_down(scope, send):
                raise
            task = asyncio.current_task()
            assert task is not None  # a request is served in a task of its own
            task.uncancel()
        finally:
            self.running -= 1
            if not self.running:
                self._idle.set()

    def _draining(self, receive: Receive) -> Receive:
        async def receive_after_drain() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self.running:
                started = time.monotonic()
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await self._idle.wait()
                except TimeoutError:
                    log.error("shutdown: %d requests still running; stopping anyway", self.running)
                else:
                    log.info("shutdown: requests drained in %.2f s", time.monotonic() - started)
            return message

        return receive_after_drain


async def _try_send_shutting_down(scope: Scope, send: Send) -> bool:
    """Send a 503 if no response was started yet; False if one was (the server refuses)."""
    headers = [(b"connection", b"close")]
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    try:
        await send_error(scope, send, errors.ShuttingDownError(), headers)
    except RuntimeError:  # a response was already started (or finished)
        return False
    return True
