"""The load generator, in its own process: closed-loop asyncio + httpx clients.

Reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"url": ..., "headers": {...}, "body": {...}, "stream": true, "concurrency": 16,
     "duration": 2.0}

``concurrency`` workers each send requests back to back over their own keep-alive connection
until ``duration`` seconds have passed (requests in flight then are completed and counted). The
answer has per-request latency and time to first token (first body chunk carrying a token) in
ms, errors, wall time and this process's own CPU seconds. (The answers' token count is checked
once per side by the caller, not here, to keep the client's per-request work small.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

MARK = b'"response"'


async def one(client: httpx.AsyncClient, cmd: dict, out: dict) -> None:
    started = time.perf_counter()
    first: float | None = None
    body = bytearray()
    async with client.stream("POST", cmd["url"], json=cmd["body"], headers=cmd["headers"]) as r:
        async for chunk in r.aiter_raw():
            if first is None and MARK in chunk:
                first = time.perf_counter()
            body += chunk
        status = r.status_code
    done = time.perf_counter()
    if status != 200:
        out["errors"] += 1
        out["last_error"] = f"{status}: {bytes(body[:300])!r}"
        return
    out["latency"].append((done - started) * 1000.0)
    if cmd["stream"] and first is not None:
        out["ttft"].append((first - started) * 1000.0)
    out["requests"] += 1


async def run(cmd: dict) -> dict:
    out: dict = {"latency": [], "ttft": [], "requests": 0, "errors": 0}
    c = int(cmd["concurrency"])
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    cpu0 = time.process_time()
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + float(cmd["duration"])

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    await one(client, cmd, out)
                except httpx.HTTPError as exc:
                    out["errors"] += 1
                    out["last_error"] = repr(exc)

        await asyncio.gather(*(worker() for _ in range(c)))
        out["wall"] = time.perf_counter() - started
    out["client_cpu"] = time.process_time() - cpu0
    return out


def main() -> None:
    if uvloop is not None:
        uvloop.install()
    for line in sys.stdin:
        if not line.strip():
            continue
        result = asyncio.run(run(json.loads(line)))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
