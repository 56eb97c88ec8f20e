"""Helpers for the fault tests: a server environment, request-log rows, generate calls and their
Server-Sent Events, raw HTTP bytes, ``/metrics`` samples, and a TCP proxy that can be cut.

:class:`TcpProxy` stands between ``llmserve serve`` and PostgreSQL so a test can make the
database unreachable (every connection cut, new ones refused) and bring it back, without touching
the real server that other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord

GENERATE = "/api/v1/generate"
BUILT_IN = "llama3.2"


def server_env(database_url: str, ollama_url: str, **settings: object) -> dict[str, str]:
    """A clean environment for a module-wide ``llmserve serve`` (what ``subprocess_env`` gives a
    single test), plus ``settings`` as environment variables."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {
        **keep,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url,
        "LLM_BACKEND": "ollama",
        "OLLAMA_BASE_URL": ollama_url,
        "BUILT_IN_OLLAMA_MODEL": BUILT_IN,
        "SSE_PING_INTERVAL_S": "15",
        "LOG_LEVEL": "WARNING",
        **{name: str(value) for name, value in settings.items()},
    }


# -- the request log ------------------------------------------------------------------------------


def rows(
    db_url: str, count: int = 0, timeout: float = 5.0, *, request_ids: Collection[str] = ()
) -> list[RequestLogRecord]:
    """The ``request_log`` rows in id order, waiting up to ``timeout`` for at least ``count``.

    With ``request_ids``, only the rows of those requests: a test sharing a server with others
    is not confused by a row of the previous test that landed late.
    """
    query = select(RequestLogRecord).order_by(RequestLogRecord.id)
    if request_ids:
        query = query.where(RequestLogRecord.request_id.in_(list(request_ids)))
    engine = make_engine(db_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with make_sessions(engine)() as session:
                found = list(session.scalars(query))
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
    finally:
        engine.dispose()


def row_count(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(RequestLogRecord)) or 0)
    finally:
        engine.dispose()


# -- Server-Sent Events ---------------------------------------------------------------------------


@dataclass
class Event:
    name: str  # "message" unless an ``event:`` line says otherwise
    data: Any  # the parsed JSON of the ``data:`` line


def parse_sse(text: str) -> list[Event]:
    """The events of an SSE body (comments such as ``: ping`` are skipped)."""
    events: list[Event] = []
    for block in text.split("\n\n"):
        name, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
        if data is not None:
            events.append(Event(name, data))
    return events


@dataclass
class Outcome:
    """One generate call as the client saw it."""

    status: int
    headers: httpx.Headers
    body: str
    elapsed_s: float
    request_id: str

    @property
    def events(self) -> list[Event]:
        return parse_sse(self.body)

    @property
    def completed(self) -> bool:
        """A 200 stream that ended with exactly ``data: {}``."""
        return self.status == 200 and self.body.endswith("data: {}\n\n")

    def json(self) -> Any:
        return json.loads(self.body)


def generate(base_url: str, *, stream: bool, prompt: str = "hi", timeout: float = 10.0) -> Outcome:
    """POST /api/v1/generate (with a fresh ``X-Request-ID``) and read the whole answer."""
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    with httpx.stream(
        "POST",
        base_url + GENERATE,
        json={"prompt": prompt, "stream": stream},
        headers={"X-Request-ID": request_id},
        timeout=timeout,
    ) as response:
        body = response.read().decode()
    elapsed = time.monotonic() - started
    return Outcome(response.status_code, response.headers, body, elapsed, request_id)


def metric(base_url: str, name: str) -> float:
    """One unlabelled sample from ``/metrics`` (0 when absent)."""
    text = httpx.get(base_url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def raw_request(base_url: str, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send exactly these bytes (no client-side URL clean-up) and read the whole answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if _complete(answer):
                break
    return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length: *(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    return int(answer.split(b" ", 2)[1])


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- a TCP proxy that can be cut ------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`cut` makes the target unreachable.

    Runs its own event loop in a thread, so it serves a subprocess while the test blocks.
    ``cut()`` closes the listening socket (new connections are refused) and every open
    connection; ``restore()`` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    @contextlib.contextmanager
    def for_database(cls, db_url: str) -> Iterator[tuple[TcpProxy, str]]:
        """A proxy in front of ``db_url``'s server, and the same URL pointed at the proxy."""
        url = make_url(db_url)
        proxy = cls(url.host or "127.0.0.1", url.port or 5432)
        proxy.start()
        try:
            proxied = url.set(host="127.0.0.1", port=proxy.port)
            yield proxy, proxied.render_as_string(hide_password=False)
        finally:
            proxy.stop()

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=5)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _pipe(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(forward(client_r, server_w), forward(server_r, client_w))
        self._writers -= {client_w, server_w}
