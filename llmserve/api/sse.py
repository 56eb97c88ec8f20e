"""Server-Sent Events: the only module that knows SSE framing.

:class:`GenerationEventStream` is an ASGI response that streams one generation:

* each fragment is sent as ``data: {"response": "…"}`` the moment it arrives;
* the end is ``data: {}``; an error after the first byte is ``event: error`` plus
  ``data: {"detail", "code"}`` and no ``data: {}``;
* while nothing has been sent for ``ping_interval`` seconds a ``: ping`` comment goes out;
* when the client disconnects the sending task is cancelled at once and the generation is
  closed (which closes the upstream request);
* when the server cancels the stream (the shutdown grace period ran out) the generation is
  closed the same way and the stream ends with an ``error`` event, code ``shutting_down``.

Per fragment the work is one ``orjson.dumps`` of the text; fragments that arrived together
(one upstream read) go out in one ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmserve import errors
from llmserve.api.errors import error_body
from llmserve.api.request_id import BODY_SEND
from llmserve.api.schemas import native_tool_calls
from llmserve.domain import StreamEvent
from llmserve.services.generation import Generation

log = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
PING = b": ping\n\n"
END = b"data: {}\n\n"


def data_event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_event(error: errors.LlmserveError) -> bytes:
    body = json.dumps(error_body(error), separators=(",", ":"))
    return b"event: error\ndata: " + body.encode() + b"\n\n"


#: The last event of a stream the server cut at the end of its shutdown grace period.
SHUTDOWN = error_event(errors.ShuttingDownError())


def token_event(text: str) -> bytes:
    # Same bytes as data_event({"response": text}), without building a dict per token.
    return b'data: {"response":' + orjson.dumps(text) + b"}\n\n"


class Final(bytes):
    """A stream's last chunk: it goes out together with the response's end, in one write."""

    __slots__ = ()


class EventStream(Response):
    """Streams pre-framed chunks from ``chunks`` with pings and disconnect handling: SSE by
    default; ``framing`` gives another content type (Ollama's NDJSON), with no pings when
    ``ping_interval`` is None (NDJSON has no comment lines).

    The start and the first chunk go out from the request's task (the generation routes have
    read the first output already, so it is there at once); the rest from a task of its own.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        ping_interval: float | None,
        headers: dict[str, str] | None = None,
        shutdown: bytes = SHUTDOWN,
        framing: list[tuple[bytes, bytes]] = SSE_HEADERS,
        ping: bytes = PING,
    ) -> None:
        self._chunks = chunks
        self._ping = ping  # what a ping is on this face (Anthropic's: an ``event: ping``)
        self._ping_interval = ping_interval
        self._shutdown = shutdown  # the last event when the server cuts the stream
        self._extra_headers = headers or {}
        self.status_code = 200
        self.background = None
        self.raw_headers = framing + [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in self._extra_headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # After the first chunk, chunks are sent from a task of their own. Awaiting them here
        # would suspend and resume the whole ASGI stack (~20 coroutine frames: uvicorn,
        # Starlette, FastAPI, every middleware) once per chunk; a task of its own resumes only
        # its own few frames. Per token at 20 ms/token that was most of llmserve's CPU.
        this = asyncio.current_task()
        assert this is not None
        loop = asyncio.get_running_loop()
        chunks = self._chunks
        interval = self._ping_interval if self._ping_interval is not None else math.inf
        ping_bytes = self._ping
        last_sent = time.monotonic()
        client_left = False
        finished = False
        # The body goes to the send beneath the middlewares (one call per chunk instead of
        # five), published only while none of them touches a body (see api/request_id.py).
        send_body = scope.get(BODY_SEND, send)
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}

        async def pump() -> None:
            nonlocal last_sent, finished
            async for chunk in chunks:
                last_sent = time.monotonic()
                if type(chunk) is Final:
                    finished = True
                    await send_body({"type": "http.response.body", "body": chunk})
                    return
                await send_body({"type": "http.response.body", "body": chunk, "more_body": True})
            finished = True
            await send_body({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch_disconnect() -> None:
            nonlocal client_left
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not finished:
                        client_left = True
                        (sender or this).cancel()
                    return

        pings: set[asyncio.Future[None]] = set()
        ping_timer: asyncio.TimerHandle | None = None

        def ping_due() -> None:
            # A timer, not a task: a task only for the rare ping that actually goes out.
            nonlocal ping_timer, last_sent
            if finished:
                return
            wait = last_sent + interval - time.monotonic()
            if wait <= 0:
                last_sent = time.monotonic()
                ping = asyncio.ensure_future(
                    send_body({"type": "http.response.body", "body": ping_bytes, "more_body": True})
                )
                pings.add(ping)
                ping.add_done_callback(_forget(pings))
                wait = interval
            ping_timer = loop.call_later(wait, ping_due)

        sender: asyncio.Task[None] | None = None
        watcher = asyncio.ensure_future(watch_disconnect())
        ping_timer = loop.call_later(interval, ping_due) if interval < math.inf else None
        shut_down = False
        try:
            # Sent now, from this task: a new task would first wait its turn behind every
            # other request that is ready to run (under load they arrive together).
            await send(start)
            chunk = await anext(chunks, None)
            if chunk is None or type(chunk) is Final:  # the whole stream at once: no task
                finished = True
                await send_body({"type": "http.response.body", "body": chunk or b""})
            else:
                last_sent = time.monotonic()
                await send_body({"type": "http.response.body", "body": chunk, "more_body": True})
                sender = asyncio.ensure_future(pump())
                # Cancelling this task (shutdown grace period ran out) cancels ``sender`` too.
                await sender
        except asyncio.CancelledError:
            # The client left (the generator's finally has closed the upstream request), or the
            # server cancelled us.
            if this.cancelling():
                this.uncancel()
            shut_down = not client_left
        except OSError:
            log.debug("client connection broke mid-stream")
        finally:
            finished = True
            if ping_timer is not None:
                ping_timer.cancel()
            tasks = [watcher, *pings] if sender is None else [watcher, sender, *pings]
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]  # a generator (others: suppressed)
        if shut_down:
            # End the response properly, so the client reads why instead of a broken stream.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    end = {"type": "http.response.body", "body": self._shutdown, "more_body": False}
                    await send(end)


def _forget(pending: set[asyncio.Future[None]]) -> Callable[[asyncio.Future[None]], None]:
    def done(future: asyncio.Future[None]) -> None:
        pending.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a ping to a client that left is not worth a warning

    return done


def generation_events(generation: Generation) -> AsyncIterator[bytes]:
    """The SSE chunks of a native stream (``/api/v1/generate``, ``/api/v1/chat``): text deltas,
    then ``data: {"tool_calls": [...]}`` with the whole calls when the answer holds any, then
    ``data: {}``; closes the generation at the end."""

    def tail() -> bytes:
        result = generation.result
        if result is None or not result.tool_calls:
            return END
        return data_event({"tool_calls": native_tool_calls(result.tool_calls)}) + END

    # Only a request that offers tools can stream tool-call deltas: the others keep the
    # one-type path (no type test per token).
    encode = _text_events if generation.request.tools else _token_events
    return framed_events(generation, encode=encode, tail=tail)


def _token_events(batch: list[str]) -> bytes:
    return token_event(batch[0]) if len(batch) == 1 else b"".join(map(token_event, batch))


def _text_events(batch: list[StreamEvent]) -> bytes:
    return b"".join([token_event(piece) for piece in batch if type(piece) is str])


async def framed_events(
    generation: Generation,
    *,
    encode: Callable[[list[Any]], bytes],
    tail: Callable[[], bytes],
    head: bytes | None = None,
    error: Callable[[errors.LlmserveError], bytes] = error_event,
) -> AsyncIterator[bytes]:
    """A generation's SSE chunks: ``head``, one ``encode(batch)`` per batch, then ``tail()``
    (or ``error(exc)``); closes the generation at the end. Used by both APIs.

    The batch that ends the output (its final line came with it) is held back and sent with the
    tail as the :class:`Final` chunk: a burst is one write, not three. The generation is closed
    (slot freed, row logged) before that last write, so the client sees the end of a request
    whose bookkeeping is done (its next request does not queue behind it).
    """
    last = b""
    try:
        if head is not None:
            yield head
        async for batch in generation.batches():
            chunk = encode(batch)
            if generation.result is not None:
                last += chunk  # the output is complete: this loop ends without waiting
                continue
            if chunk:  # a batch of tool-call deltas only is empty on the native stream
                yield chunk
        end = last + tail()
    except errors.LlmserveError as exc:
        log.warning("stream ended with %s: %s", exc.code, exc.detail)
        end = last + error(exc)
    except Exception as exc:
        log.exception("generation failed mid-stream")
        end = last + error(errors.LlmserveError(f"internal error: {exc.__class__.__name__}"))
    finally:
        await generation.aclose()
    yield Final(end)
