"""A lean HTTP/1.1 client for the one hot upstream call: a streamed NDJSON generation.

Why not httpx here: the generation path reads one small chunk per token, and httpx pays for
each chunk in pure Python (httpcore's pool and h11's state machine: ~25 µs a chunk on this
class of machine), which was most of llmserve's CPU per streamed token. This client is an
``asyncio.Protocol`` with httptools' C parser (already installed with uvicorn): bytes arrive in
``data_received``, the parser de-chunks them, and the reader takes *every* complete line that
has arrived at each wake-up, so a burst of tokens costs one wake-up, not one per token.

Scope, kept small on purpose: ``POST`` with a JSON body, keep-alive connections in a LIFO pool,
a connect timeout, a timeout for each wait (first response byte, then between body chunks),
TLS for ``https`` URLs. No redirects, proxies, cookies or compression (Ollama uses none).
Everything else keeps using the runtime's shared ``httpx.AsyncClient``.

Errors are plain exceptions the caller translates: :class:`UpstreamConnectError` (could not
connect: refused, unreachable, connect timeout), :class:`UpstreamTimeout` (a wait expired),
:class:`UpstreamClosed` (the connection broke or the body ended early),
:class:`UpstreamProtocolError` (not HTTP).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from urllib.parse import urlsplit

import httptools

_READ_HIGH_WATER = 1 << 20  # stop reading from the socket while this much is unconsumed


class UpstreamError(Exception):
    pass


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamClosed(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class _Connection(asyncio.Protocol):
    """One TCP connection; parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.arrived: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self.received_any = False
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self._parser is None:
            self._fail(UpstreamProtocolError("the server sent bytes nobody asked for"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - we never ask for upgrades
            self._fail(UpstreamProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self._parser is not None and self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = UpstreamClosed(f"the connection closed before the response ended{reason}")
        self._wake()

    # -- httptools callbacks --------------------------------------------------------------

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.arrived.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- used by Response -----------------------------------------------------------------

    def begin(self, request: bytes) -> None:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers_done = self.complete = self.keep_alive = self.received_any = False
        self.error = None
        self.transport.write(request)

    def take(self) -> list[bytes]:
        """Every body chunk that has arrived (possibly none)."""
        chunks = list(self.arrived)
        self.arrived.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    def wait(self, wait_s: float) -> asyncio.Future[None]:
        """A future that completes when something happens (data, end, error) or fails with
        UpstreamTimeout after ``wait_s`` seconds. Awaited directly: no coroutine per wait.

        One lazily re-armed timer per connection instead of a timer per wait (per token): a wait
        moves the deadline later for free (when the timer fires early it re-arms for the rest);
        only a deadline earlier than the armed timer replaces it.
        """
        loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + wait_s
        if self._timer is not None and self._timer.when() > deadline:
            self._stop_timer()  # a shorter limit than the armed one (first byte, then idle)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._on_timer)
        waiter = self._waiter = loop.create_future()
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms a new timer
        loop = waiter.get_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._on_timer)
        else:
            waiter.set_exception(UpstreamTimeout("timed out"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> None:
        """Back in the pool: no timer runs for an idle connection."""
        self._stop_timer()

    def abort(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Response:
    """A response being read. ``aclose()`` returns a finished connection to the pool, else
    aborts it (which is what tells the server to stop working on the request)."""

    def __init__(self, pool: Http1Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self._released = False

    async def chunks(self, wait_s: float) -> list[bytes]:
        """The body chunks that have arrived, waiting up to ``wait_s`` for at least one.

        Returns ``[]`` at the end of the body; raises UpstreamTimeout / UpstreamClosed.
        """
        conn = self._conn
        while True:
            if conn.arrived:
                return conn.take()
            if conn.complete:
                return []
            if conn.error is not None:
                raise conn.error
            await conn.wait(wait_s)

    async def read(self, limit: int, wait_s: float) -> bytes:
        """The whole body, up to ``limit`` bytes (the rest is not read)."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            got = await self.chunks(wait_s)
            if not got:
                break
            parts.extend(got)
            size += sum(len(part) for part in got)
        return b"".join(parts)[:limit]

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.error is None and not conn.closed:
            conn.take()
            conn.idle()
            self._pool.put_back(conn)
        else:
            conn.abort()


class Http1Pool:
    """Keep-alive connections to one origin (``http://host:port[/prefix]`` or ``https://…``)."""

    def __init__(
        self, base_url: str, *, connect_timeout: float, max_idle: int = 100, user_agent: str
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if self._ssl else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._user_agent = user_agent
        self._idle: list[_Connection] = []

    async def post_json(self, path: str, body: bytes, *, wait_s: float) -> Response:
        """Send ``POST path`` and wait (up to ``wait_s``) for the status and headers."""
        head = (
            f"POST {self._prefix}{path} HTTP/1.1\r\n"
            f"Host: {self._host_header}\r\n"
            f"User-Agent: {self._user_agent}\r\n"
            "Accept: application/x-ndjson, application/json\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        request = head + body
        while True:
            conn, reused = await self._connection()
            conn.begin(request)
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(wait_s)
            except UpstreamClosed:
                conn.abort()
                if reused and not conn.received_any:
                    continue  # the server had closed this idle connection: use a fresh one
                raise
            except BaseException:
                conn.abort()
                raise
            return Response(self, conn)

    async def _connection(self) -> tuple[_Connection, bool]:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise UpstreamConnectError(
                f"no connection within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(exc.strerror or str(exc) or "refused") from None
        return conn, False

    def put_back(self, conn: _Connection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()
