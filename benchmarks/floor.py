"""What a streamed token costs *any* Python relay on this machine: the floor under llmserve.

    .venv/bin/python benchmarks/floor.py [--delay 0.02] [--duration 6] [--aiohttp]

Same fast double and load generator as ``load.py`` (64-token streams, concurrency 16), with
three things in the middle, each in its own process, measured from ``/proc`` like ``load.py``:

* **relay**: the cheapest possible forwarder, two ``asyncio.Protocol`` s (uvloop) copying bytes
  between the client's and the double's sockets (no HTTP parsing at all);
* **minimal ASGI proxy**: uvicorn (httptools, uvloop, one worker) running a 20-line raw ASGI app
  that opens the upstream request with llmserve's own ``backends._http1`` pool and forwards
  each chunk it reads as one ``send`` — no FastAPI, no JSON, no SSE framing, no logging;
* with ``--aiohttp``, the same proxy on ``benchmarks/_aiohttp_pool.py`` (aiohttp's client
  behind the pool's interface): the difference between the two proxies is the clients' own;
* **the double alone** (its own CPU on the same run).

Compare with ``load.py``'s "stream c=16, 20 ms/token" row for llmserve: the difference between
llmserve and the minimal proxy is what llmserve's own layers cost; the minimal proxy is what
uvicorn + asyncio cost per token on this machine when tokens arrive one at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, setup_logging
from benchmarks.load import MODEL, TOKENS, LoadGen, cpu_seconds, double_process
from tests._server import free_port

CONCURRENCY = 16


def _relay(upstream: str, ready: multiprocessing.Queue) -> None:
    import asyncio

    import uvloop

    host, port = upstream.removeprefix("http://").split(":")

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Up(asyncio.Protocol):
            def __init__(self, down: asyncio.Transport) -> None:
                self.down = down

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.down.write(data)

            def connection_lost(self, exc: Exception | None) -> None:
                self.down.close()

        class Down(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.up: asyncio.Transport | None = None
                self.pending: list[bytes] = []
                transport.pause_reading()  # type: ignore[attr-defined]
                self.connecting = loop.create_task(self.connect())

            async def connect(self) -> None:
                up, _ = await loop.create_connection(
                    lambda: Up(self.transport), host, int(port)  # type: ignore[arg-type]
                )
                self.up = up  # type: ignore[assignment]
                for data in self.pending:
                    up.write(data)
                self.transport.resume_reading()  # type: ignore[attr-defined]

            def data_received(self, data: bytes) -> None:
                if self.up is None:
                    self.pending.append(data)
                else:
                    self.up.write(data)

            def connection_lost(self, exc: Exception | None) -> None:
                if self.up is not None:
                    self.up.close()

        server = await loop.create_server(Down, "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


def _minimal_proxy(upstream: str, port: int, client: str = "_http1") -> None:
    import uvicorn

    from llmserve.backends import _http1

    if client == "aiohttp":
        from benchmarks._aiohttp_pool import AiohttpPool

        _http1.Http1Pool = AiohttpPool  # type: ignore[misc, assignment]
    pool: _http1.Http1Pool | None = None

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        nonlocal pool
        if scope["type"] != "http":
            return
        if pool is None:
            pool = _http1.Http1Pool(upstream, connect_timeout=5, user_agent="floor")
        message = await receive()
        response = await pool.post_json("/api/generate", message["body"], wait_s=30)
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)
        while chunks := await response.chunks(30):
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
        await response.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument(
        "--per-stream",
        action="store_true",
        help="the double's tokens of different streams arrive independently (load.py's "
        "'independent' row) instead of in one decoding step for all streams",
    )
    parser.add_argument(
        "--aiohttp", action="store_true", help="also the minimal proxy on aiohttp's client"
    )
    args = parser.parse_args()
    setup_logging()
    rows = []
    with contextlib.ExitStack() as stack:
        extra = ["--per-stream"] if args.per_stream else []
        double, upstream = stack.enter_context(double_process(args.delay, *extra))
        ready: multiprocessing.Queue = multiprocessing.Queue()
        relay = multiprocessing.Process(target=_relay, args=(upstream, ready), daemon=True)
        relay.start()
        relay_port = ready.get(timeout=30)
        middles = [("relay", relay, relay_port)]
        for client in ("_http1", "aiohttp") if args.aiohttp else ("_http1",):
            port = free_port()
            proxy = multiprocessing.Process(
                target=_minimal_proxy, args=(upstream, port, client), daemon=True
            )
            proxy.start()
            name = "minimal ASGI proxy" + (" (aiohttp)" if client == "aiohttp" else "")
            middles.append((name, proxy, port))
        time.sleep(2.0)
        gen = LoadGen()
        stack.callback(gen.close)
        for name, process, port in middles:
            pid = process.pid
            assert pid is not None
            cmd = {
                "url": f"http://127.0.0.1:{port}/api/generate",
                "headers": {},
                "body": {"model": MODEL, "prompt": "hi", "stream": True},
                "stream": True,
                "concurrency": CONCURRENCY,
            }
            gen.run(**cmd, duration=1.0)  # warm-up
            before, double_before = cpu_seconds(pid), cpu_seconds(double.pid)
            result = gen.run(**cmd, duration=args.duration)
            used, double_used = cpu_seconds(pid) - before, cpu_seconds(double.pid) - double_before
            n = result["requests"]
            rows.append([name, n, result["errors"], round(1e6 * used / n / TOKENS, 1)])
            rows.append(
                ["  (the double, same run)", n, "", round(1e6 * double_used / n / TOKENS, 1)]
            )
        for _, process, _ in middles:
            process.kill()
    print(f"\n{TOKENS}-token streams, {args.delay * 1000:g} ms/token, concurrency {CONCURRENCY}\n")
    print_table(["in the middle", "requests", "errors", "CPU µs/token"], rows)


if __name__ == "__main__":
    main()
