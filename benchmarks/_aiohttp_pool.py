"""``llmserve.backends._http1.Http1Pool``'s interface on aiohttp, for ``ab_client.py`` only.

The question it answers: would aiohttp's client, a maintained library with a C parser, cost the
generation path as little per streamed token as the hand-written ``_http1`` pool? So it is used
the way an aiohttp-based backend would use it, at its best: one ``ClientSession`` with a
keep-alive ``TCPConnector`` (no connection limit, like the pool), no cookie jar, no
decompression (Ollama sends none; no ``Accept-Encoding``), no environment proxies, the URL
parsed once per path, and ``ClientTimeout`` objects made once per wait. Each ``chunks()`` is one
``content.readany()``: everything that has arrived, in one wake-up, like the pool's ``take()``.

Timeouts: aiohttp's ``sock_read`` is one limit for the wait for the headers and for each later
read, re-armed by aiohttp on every read from the socket. ``post_json(wait_s=...)`` sets it for
the headers (Ollama's first byte), and ``chunks(wait_s)`` moves it to its own ``wait_s`` (the
idle limit) through the connection's protocol, once, when it differs.

Errors are ``_http1``'s, so the Ollama backend translates them as it does the pool's:
connect failures → ``UpstreamConnectError``, a read timeout → ``UpstreamTimeout``, a broken or
short body → ``UpstreamClosed``, a malformed response → ``UpstreamProtocolError``.
``aclose()`` releases a connection whose body was read to its end (keep-alive) and closes any
other, which is what tells Ollama to stop.

The first request logs one WARNING (``generation pool: aiohttp …``): the server's log then shows
which pool answered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from yarl import URL

from llmserve.backends import _http1

log = logging.getLogger("llmserve.bench.aiohttp_pool")


def _translate(exc: BaseException) -> _http1.UpstreamError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return _http1.UpstreamConnectError(str(exc) or "refused")
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return _http1.UpstreamTimeout("timed out")
    if isinstance(exc, aiohttp.ClientResponseError):
        return _http1.UpstreamProtocolError(f"malformed HTTP response: {exc}")
    return _http1.UpstreamClosed(f"the connection broke: {exc!r}")


class AiohttpResponse:
    """A response being read; the same contract as ``_http1.Response``."""

    def __init__(self, response: aiohttp.ClientResponse, wait_s: float) -> None:
        self._response = response
        self._content = response.content
        self._wait_s = wait_s
        self.status = response.status
        self._ended = False
        self._released = False

    async def chunks(self, wait_s: float) -> list[bytes]:
        """Everything that has arrived (one ``bytes``), waiting up to ``wait_s``; ``[]`` at the
        end of the body."""
        if wait_s != self._wait_s:
            self._wait_s = wait_s
            connection = self._response.connection
            if connection is not None and connection.protocol is not None:
                connection.protocol.read_timeout = wait_s
        try:
            data = await self._content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from None
        if not data:
            self._ended = True
            return []
        return [data]

    async def read(self, limit: int, wait_s: float) -> bytes:
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
        if self._ended:
            self._response.release()  # back to the connector's keep-alive pool
        else:
            self._response.close()  # closes the connection: Ollama stops generating


class AiohttpPool:
    """``_http1.Http1Pool``'s constructor and methods on one ``aiohttp.ClientSession``."""

    def __init__(
        self, base_url: str, *, connect_timeout: float, max_idle: int = 100, user_agent: str
    ) -> None:
        self._base = base_url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "application/x-ndjson, application/json",
            "Content-Type": "application/json",
        }
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._closing: set[asyncio.Task[Any]] = set()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
        log.warning("generation pool: aiohttp %s (benchmark adapter)", aiohttp.__version__)
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("Accept-Encoding",),
        )

    async def post_json(self, path: str, body: bytes, *, wait_s: float) -> AiohttpResponse:
        """Send ``POST path`` and wait (up to ``wait_s``) for the status and headers."""
        session = self._session
        if session is None:
            session = self._session = self._open()
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base + path)
        timeout = self._timeouts.get(wait_s)
        if timeout is None:
            timeout = self._timeouts[wait_s] = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=wait_s
            )
        try:
            response = await session.post(url, data=body, headers=self._headers, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from None
        return AiohttpResponse(response, wait_s)

    def close(self) -> None:
        """Close the session's connections (from a running loop: the backend's ``aclose``)."""
        session, self._session = self._session, None
        if session is None:
            return
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
