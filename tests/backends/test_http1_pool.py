"""The generation path's HTTP/1.1 pool (``llmserve.backends._http1``) against a raw TCP server.

The server is a few lines of asyncio that answer with exactly the bytes each test scripts, so
the cases a library server would smooth over (a keep-alive connection closed while idle, a
body cut short, silence) are real.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from llmserve.backends import _http1

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@asynccontextmanager
async def raw_server(
    handler: Callable[[RawServer], Handler],
) -> AsyncIterator[tuple[RawServer, str]]:
    state = RawServer(lambda r, w: asyncio.sleep(0))
    state.handler = handler(state)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"http://127.0.0.1:{port}/prefix/"
    finally:
        server.close()


def pool(url: str, connect_timeout: float = 2.0) -> _http1.Http1Pool:
    return _http1.Http1Pool(url, connect_timeout=connect_timeout, user_agent="test/1")


async def read_all(response: _http1.Response) -> bytes:
    parts = []
    while chunks := await response.chunks(2.0):
        parts.extend(chunks)
    return b"".join(parts)


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await state.read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(OK_HEAD + chunked(b'{"a":1}\n', b'{"b":2}\n'))

        return serve

    async with raw_server(handler) as (state, url):
        client = pool(url)
        for _ in range(5):
            response = await client.post_json("/api/generate", b'{"x":1}', wait_s=2.0)
            assert response.status == 200
            assert await read_all(response) == b'{"a":1}\n{"b":2}\n'
            await response.aclose()
        client.close()
    assert state.connections == 1
    first = state.requests[0]
    assert first.startswith(b"POST /prefix/api/generate HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 7\r\n" in first and first.endswith(b'{"x":1}')
    assert b"\r\nHost: 127.0.0.1:" in first


async def test_a_burst_arrives_as_one_batch_of_chunks() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(OK_HEAD + chunked(*[b'{"t":%d}\n' % i for i in range(50)]))
            await writer.drain()
            await asyncio.sleep(0.5)

        return serve

    async with raw_server(handler) as (_, url):
        client = pool(url)
        response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
        await asyncio.sleep(0.1)  # everything has arrived
        batch = await response.chunks(2.0)
        assert len(batch) == 50  # one wake-up hands over every chunk that arrived
        assert await response.chunks(2.0) == []  # and the end
        await response.aclose()
        client.close()


async def test_an_idle_connection_the_server_closed_is_replaced_transparently() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(OK_HEAD + chunked(b"{}\n"))
            await writer.drain()
            # Keep-alive announced, but the server drops the connection after one response
            # (as a restarted Ollama would), possibly before the client notices.

        return serve

    async with raw_server(handler) as (state, url):
        client = pool(url)
        for _ in range(3):
            response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
            assert await read_all(response) == b"{}\n"
            await response.aclose()
        client.close()
    assert state.connections == 3


async def test_closing_before_the_end_aborts_the_connection() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(OK_HEAD + b"8\r\n" + b'{"a":1}\n' + b"\r\n")
            await writer.drain()
            assert await reader.read() == b""  # EOF: the client went away
            state.closed_by_client.set()

        return serve

    async with raw_server(handler) as (state, url):
        client = pool(url)
        response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
        assert await response.chunks(2.0) == [b'{"a":1}\n']
        await response.aclose()
        await asyncio.wait_for(state.closed_by_client.wait(), 2.0)
        client.close()


async def test_a_body_cut_short_is_an_error_not_an_end() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(OK_HEAD + b"8\r\n" + b'{"a":1}\n' + b"\r\n")
            await writer.drain()

        return serve

    async with raw_server(handler) as (_, url):
        client = pool(url)
        response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
        with pytest.raises(_http1.UpstreamClosed):
            await read_all(response)
        await response.aclose()
        client.close()


async def test_silence_times_out_before_and_after_the_headers() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            if len(state.requests) == 2:
                writer.write(OK_HEAD)
            await asyncio.sleep(5)

        return serve

    async with raw_server(handler) as (_, url):
        client = pool(url)
        with pytest.raises(_http1.UpstreamTimeout):
            await client.post_json("/api/generate", b"{}", wait_s=0.2)
        response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
        with pytest.raises(_http1.UpstreamTimeout):
            await response.chunks(0.2)
        await response.aclose()
        client.close()


async def test_error_statuses_and_their_bodies_are_readable() -> None:
    body = b'{"error":"model \\"nope\\" not found, try pulling it first"}'

    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            await asyncio.sleep(1)

        return serve

    async with raw_server(handler) as (_, url):
        client = pool(url)
        response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
        assert response.status == 404
        assert await response.read(1 << 16, 2.0) == body
        await response.aclose()
        client.close()


async def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(1)

        return serve

    async with raw_server(handler) as (_, url):
        client = pool(url)
        with pytest.raises(_http1.UpstreamProtocolError):
            await client.post_json("/api/generate", b"{}", wait_s=2.0)
        client.close()


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        client = pool(f"http://127.0.0.1:{port}")
        with pytest.raises(_http1.UpstreamConnectError):
            await client.post_json("/api/generate", b"{}", wait_s=2.0)


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="not an http"):
        pool("unix:///var/run/ollama.sock")


async def test_the_wait_limit_counts_from_each_chunk_not_from_the_first_wait() -> None:
    """One timer per connection is re-armed lazily: steady chunks 0.1 s apart never time out
    a 0.25 s wait, however long the stream; silence afterwards does, about 0.25 s later."""

    def handler(state: RawServer) -> Handler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await state.read_request(reader)
            writer.write(OK_HEAD)
            for _ in range(8):
                await asyncio.sleep(0.1)
                writer.write(b"3\r\n{}\n\r\n")
            await asyncio.sleep(5)

        return serve

    async with raw_server(handler) as (_, url):
        client = pool(url)
        response = await client.post_json("/api/generate", b"{}", wait_s=2.0)
        received = 0
        loop = asyncio.get_running_loop()
        with pytest.raises(_http1.UpstreamTimeout):
            while True:
                received += len(await response.chunks(0.25))
                last = loop.time()
        waited = loop.time() - last
        assert received == 8  # ~0.8 s of chunks, three times the wait limit, and no timeout
        assert 0.2 < waited < 0.6
        await response.aclose()
        client.close()
