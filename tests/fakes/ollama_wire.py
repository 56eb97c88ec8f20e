"""HTTP plumbing for the Ollama double: Go-style JSON, timestamps and one request/response exchange.

Everything here sits directly on ASGI so the double controls exactly when the status line goes out
(Ollama sends nothing until the first chunk exists), when each chunk is flushed, and how a
connection ends (cleanly, with an in-stream error, or cut like a crashed server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
TEXT_TYPE = "text/plain; charset=utf-8"
GIN_TEXT_TYPE = "text/plain"  # Gin's own 404/405 pages carry no charset

# Go's encoding/json escapes these inside strings; they never occur outside strings in JSON.
_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def go_json(value: Any) -> bytes:
    """Encode ``value`` the way Go's ``json.Marshal`` does: compact, UTF-8, HTML-escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text.encode()


def rfc3339(ns: int | None = None) -> str:
    """A UTC RFC 3339 timestamp with up to 9 fractional digits, trailing zeros dropped (Go)."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


class Exchange:
    """One HTTP request and the ways to answer it.

    Contract: call :meth:`read_body` first; it also starts a watcher that notices the client going
    away (``http.disconnect``) at any later point, so sleeps in :meth:`pause` end early. Responses
    are either whole (:meth:`respond`, :meth:`json`, :meth:`error`) or streamed (:meth:`write`,
    whose first call sends the status line, then :meth:`finish`), or the connection is cut with
    :meth:`abort`. :meth:`close` must run when the handler is done.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: str = scope.get("query_string", b"").decode("latin-1")
        self.headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.body = b""
        self.arrived_ns = time.monotonic_ns()
        self.gone = False  # the client closed the connection
        self.killed = False  # the double is stopping or going down
        self.aborted = False  # we cut the connection on purpose
        self.started = False  # the status line and headers are out
        self._receive = receive
        self._send = send
        self._completed = False
        self._interrupt = asyncio.Event()
        self._gone_event = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """True while the client is connected and the double is not shutting this exchange down."""
        return not (self.gone or self.killed)

    async def read_body(self) -> None:
        """Read the whole request body, then start watching for the client to disconnect."""
        chunks: list[bytes] = []
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._mark_gone()
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        if not self.gone:
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self._completed:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._completed:
                    self._mark_gone()
                return

    def _mark_gone(self) -> None:
        self.gone = True
        self._gone_event.set()
        self._interrupt.set()

    def kill(self) -> None:
        """Ask the handler to stop now (server shutdown or ``set_down``); it then aborts."""
        self.killed = True
        self._interrupt.set()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless interrupted; return :attr:`alive` afterwards."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(), seconds)
        else:
            await asyncio.sleep(0)
        return self.alive

    async def wait_until_interrupted(self) -> None:
        """Block until the client leaves or the double stops (the ``hang`` script)."""
        await self._interrupt.wait()

    async def _emit(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError:  # a failing send means the peer is gone
            self._mark_gone()

    async def start(self, status: int, content_type: str | None, length: int | None = None) -> None:
        """Send the status line and headers."""
        headers: list[tuple[bytes, bytes]] = []
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        self.started = True
        await self._emit({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes, content_type: str = NDJSON_TYPE) -> bool:
        """Send and flush one chunk (status 200 and headers first if needed); return alive."""
        if not self.started:
            await self.start(200, content_type)
        await self._emit({"type": "http.response.body", "body": data, "more_body": True})
        return self.alive

    async def finish(self, data: bytes = b"", content_type: str = NDJSON_TYPE) -> None:
        """End a streamed response cleanly, optionally with a last chunk."""
        if not self.started:
            await self.start(200, content_type)
        self._completed = True
        await self._emit({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(self, status: int, body: bytes, content_type: str | None) -> None:
        """Send a whole response with a Content-Length."""
        await self.start(status, content_type, len(body))
        self._completed = True
        await self._emit({"type": "http.response.body", "body": body, "more_body": False})

    async def json(self, status: int, value: Any) -> None:
        await self.respond(status, go_json(value), JSON_TYPE)

    async def error(self, status: int, message: str) -> None:
        """Ollama's error shape: exactly ``{"error":"<message>"}``."""
        await self.json(status, {"error": message})

    async def abort(self) -> None:
        """Close the connection now: no further bytes, no final chunk, like a crashed server.

        Buffered chunks are still flushed before the FIN. Uses the transport of uvicorn's
        request cycle (the bound ``receive``); ASGI itself has no way to say "cut".
        """
        self.aborted = True
        cycle = getattr(self._receive, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:  # pragma: no cover - only under a different ASGI server
            logger.warning("cannot cut the connection: no transport on the ASGI receive callable")
            return
        transport.close()
        # Let the server notice the closed connection before we return, so it does not complain
        # that the response was left incomplete.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone_event.wait(), 1.0)

    async def close(self) -> None:
        """Stop the disconnect watcher."""
        self._completed = True
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
