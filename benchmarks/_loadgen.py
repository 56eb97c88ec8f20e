"""The load generator, in its own process: closed-loop clients on a minimal HTTP/1.1 client.

Reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"url": ..., "headers": {...}, "body": {...}, "stream": true, "concurrency": 16,
     "duration": 2.0, "mark": ...}

``concurrency`` workers each send requests back to back over their own keep-alive connection
until ``duration`` seconds have passed (requests in flight then are completed and counted). The
answer has per-request latency and time to first token in ms, errors (a status other than 200, a
broken connection, no answer within 60 s), wall time and this process's own CPU seconds. The
first token is the first body bytes that contain ``mark`` (default ``"response"``, as in
Ollama's ``/api/generate`` lines and llmserve's ``data: {"response": ...}`` events; e.g.
``"content":" tok"`` for ``/api/chat`` lines and OpenAI chat chunks, whose first event carries
only the role). (The answers' token count is checked once per side by the caller, not here, to
keep the client's per-request work small.)

The client is deliberately lean so that it does not limit the measurement: one
``asyncio.Protocol`` per connection (uvloop if importable) with httptools' C response parser; the
request bytes are encoded once per command; per response it keeps only the status, the two
timestamps and, for an error, the first 300 bytes of the body.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import time
from urllib.parse import urlsplit

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

MARK = '"response"'
TIMEOUT = 60.0  # seconds for one whole request
perf_counter = time.perf_counter


class Broken(Exception):
    """The connection broke (or timed out) before the response was complete."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, mark: bytes) -> None:
        self.mark = mark
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.status = 0
        self.first = 0.0  # when the first body bytes with MARK arrived; 0: not yet
        self.tail = b""  # the last bytes of the body so far, for a MARK split across reads
        self.error_body = bytearray()
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(Broken(f"bad response: {exc!r}"))
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(Broken(f"connection closed: {exc!r}"))

    def fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # -- httptools callbacks --------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first:
            mark = self.mark
            if mark in body or mark in self.tail + body[: len(mark)]:
                self.first = perf_counter()
            else:
                self.tail = body[-len(mark) :]
        if self.status != 200 and len(self.error_body) < 300:
            self.error_body += body[:300]

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the worker's side ----------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[None]:
        self.status = 0
        self.first = 0.0
        self.tail = b""
        self.error_body.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return self.waiter


def encode_request(cmd: dict) -> tuple[str, int, bytes]:
    parts = urlsplit(cmd["url"])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    body = json.dumps(cmd["body"], separators=(",", ":")).encode()
    headers = {
        "Host": parts.netloc,
        "Accept": "*/*",
        "User-Agent": "llmserve-loadgen",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **cmd["headers"],
    }
    head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return host, port, (head + "\r\n").encode("latin-1") + body


async def run(cmd: dict) -> dict:
    out: dict = {"latency": [], "ttft": [], "requests": 0, "errors": 0}
    latency, ttft = out["latency"], out["ttft"]
    stream = bool(cmd["stream"])
    host, port, request = encode_request(cmd)
    mark = str(cmd.get("mark") or MARK).encode()
    loop = asyncio.get_running_loop()
    c = int(cmd["concurrency"])
    cpu0 = time.process_time()
    started = perf_counter()
    deadline = started + float(cmd["duration"])

    def error(message: str) -> None:
        out["errors"] += 1
        out["last_error"] = message

    async def worker() -> None:
        conn: Connection | None = None
        while perf_counter() < deadline:
            if conn is None or conn.closed or not conn.keep_alive:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(lambda: Connection(mark), host, port), TIMEOUT
                    )
                except (OSError, TimeoutError) as exc:
                    error(f"connect: {exc!r}")
                    conn = None
                    await asyncio.sleep(0.01)
                    continue
            begun = perf_counter()
            waiter = conn.send(request)
            timer = loop.call_later(TIMEOUT, conn.fail, Broken("no complete answer in 60 s"))
            try:
                await waiter
            except Broken as exc:
                error(repr(exc))
                conn.transport.close()  # type: ignore[union-attr]
                conn = None
                continue
            finally:
                timer.cancel()
            done = perf_counter()
            if conn.status != 200:
                error(f"{conn.status}: {bytes(conn.error_body[:300])!r}")
                continue
            latency.append((done - begun) * 1000.0)
            if stream and conn.first:
                ttft.append((conn.first - begun) * 1000.0)
            out["requests"] += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(c)))
    out["wall"] = perf_counter() - started
    out["client_cpu"] = time.process_time() - cpu0
    return out


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, whatever ``write(2)`` returns.

    Not ``sys.stdout.write``: after an event loop has run in this process (uvloop 0.23 here), a
    blocking ``write(2)`` of a result larger than the pipe buffer intermittently returns a short
    count with no signal in sight, and ``sys.stdout`` then silently dropped the rest of the line
    (seen with strace: one ``write(1, ..., 300001) = 196608`` and no second write), which left
    ``load.py`` waiting for the line's end forever.
    """
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def main() -> None:
    if uvloop is not None:
        uvloop.install()
    for line in sys.stdin:
        if not line.strip():
            continue
        result = asyncio.run(run(json.loads(line)))
        write_all(sys.stdout.fileno(), (json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    main()
