"""Load and slot accounting on a real ``llmserve serve``.

64 streaming clients loop for a few seconds against 8 generation slots: no 5xx, every answer
is a complete stream or a 429, no slot leaks, one log row per answered request. Then every way a
generation can end is exercised on a 2-slot server, and the slots are shown to be all free.

Slots are observed from outside: ``/metrics`` exports admission control's running and queued
counts, and the Ollama double shows how many generations actually reached it.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import GENERATE, metric, parse_sse, row_count, rows

CLIENTS = 64
SLOTS = 8
DURATION_S = 5.0
TOKENS = [f"t{i} " for i in range(8)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _in_flight(server: ServerProcess) -> tuple[float, float]:
    return (
        metric(server.base_url, "llmserve_generations_in_flight"),
        metric(server.base_url, "llmserve_generations_queued"),
    )


def _wait_generations(ollama: OllamaDouble, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ollama.generations) < count:
        assert time.monotonic() < deadline, f"{len(ollama.generations)} of {count} arrived"
        time.sleep(0.02)


def _wait_state(
    server: ServerProcess, want: tuple[int, int], timeout: float = 5.0
) -> tuple[float, float]:
    """Poll (running, queued) until it is ``want`` or ``timeout`` passes; the last value."""
    deadline = time.monotonic() + timeout
    while (state := _in_flight(server)) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return state


def _prove_slots_free(server: ServerProcess, ollama: OllamaDouble, slots: int) -> list[str]:
    """All ``slots`` can run at once (none leaked), then nothing is left running or queued.

    Returns the request ids of the ``slots`` requests it made."""
    assert _wait_state(server, (0, 0)) == (0, 0)
    ollama.default_script = Script(tokens=["x"] * 4, delay_s=0.25)
    before = len(ollama.generations)

    ids: list[str] = []

    async def hold_all() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:

            async def one() -> None:
                response = await client.post(GENERATE, json={"prompt": "slot"})
                statuses.append(response.status_code)
                ids.append(response.headers["x-request-id"])

            async with anyio.create_task_group() as group:
                for _ in range(slots):
                    group.start_soon(one)
                # Every request reached the double, so none is waiting for a leaked slot.
                await anyio.to_thread.run_sync(_wait_generations, ollama, before + slots)
                assert await anyio.to_thread.run_sync(_in_flight, server) == (slots, 0)
        return statuses

    assert anyio.run(hold_all) == [200] * slots
    assert _wait_state(server, (0, 0)) == (0, 0)
    return ids


# -- 64 clients -----------------------------------------------------------------------------------


@pytest.fixture
def load_server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        **subprocess_env,
        "MAX_CONCURRENT_GENERATIONS": str(SLOTS),
        "MAX_QUEUED_GENERATIONS": "64",
        "QUEUE_TIMEOUT_S": "30",
    }
    with running_server(env, tmp_path, warm=True) as server:
        yield server


@pytest.mark.anyio
async def test_64_streaming_clients(
    load_server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.default_script = Script(tokens=TOKENS)
    statuses: collections.Counter[int] = collections.Counter()
    latencies: list[float] = []
    broken: list[str] = []
    ids: list[str] = []
    tokens = 0
    stop_at = time.monotonic() + DURATION_S

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while time.monotonic() < stop_at:
            started = time.monotonic()
            async with client.stream(
                "POST", GENERATE, json={"prompt": "load", "stream": True}
            ) as response:
                body = (await response.aread()).decode()
            latencies.append(time.monotonic() - started)
            statuses[response.status_code] += 1
            ids.append(response.headers["x-request-id"])
            if response.status_code == 200:
                events = parse_sse(body)
                if not body.endswith("data: {}\n\n") or len(events) != len(TOKENS) + 1:
                    broken.append(body[-200:])
                tokens += len(events) - 1
            elif response.status_code == 429:
                assert response.headers["retry-after"]

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        httpx.AsyncClient(base_url=load_server.base_url, timeout=30, limits=limits) as client,
        anyio.create_task_group() as group,
    ):
        for _ in range(CLIENTS):
            group.start_soon(client_loop, client)
    elapsed = time.monotonic() - (stop_at - DURATION_S)

    requests = sum(statuses.values())
    print(
        f"\nload: {CLIENTS} clients, {SLOTS} slots, {requests} requests in {elapsed:.1f} s "
        f"({requests / elapsed:.0f} req/s), {tokens} tokens ({tokens / elapsed:.0f} tok/s), "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {statistics.quantiles(latencies, n=20)[-1] * 1000:.0f} ms, statuses {dict(statuses)}"
    )
    assert requests >= CLIENTS
    assert set(statuses) <= {200, 429}, statuses
    assert not broken, broken[:3]

    ids += await anyio.to_thread.run_sync(_prove_slots_free, load_server, ollama, SLOTS)
    # One row per answered request (a 429 is a "rejected" row), plus the slot proof's; found by
    # request id, since the previous test's server may still be writing its last row.
    expected = requests + SLOTS
    assert len(set(ids)) == expected
    logged = await anyio.to_thread.run_sync(
        lambda: rows(db_url, expected, timeout=10, request_ids=ids)
    )
    await anyio.sleep(0.5)
    late = await anyio.to_thread.run_sync(lambda: rows(db_url, request_ids=ids))
    assert len(late) == len(logged) == expected
    assert collections.Counter(row.status for row in late) == collections.Counter(
        ok=statuses[200] + SLOTS, rejected=statuses[429]
    )


# -- every way out frees its slot -----------------------------------------------------------------


@pytest.fixture
def small_server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        **subprocess_env,
        "MAX_CONCURRENT_GENERATIONS": "2",
        "MAX_QUEUED_GENERATIONS": "2",
        "QUEUE_TIMEOUT_S": "1",
        "FIRST_TOKEN_TIMEOUT_S": "1.5",
        "TOKEN_IDLE_TIMEOUT_S": "0.5",
    }
    with running_server(env, tmp_path, warm=True) as server:
        yield server


def test_every_release_path_frees_its_slot(
    small_server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    base = small_server.base_url
    expected: collections.Counter[str] = collections.Counter()

    def post(script: Script | None, *, stream: bool, row: str, timeout: float = 10) -> None:
        if script is not None:
            ollama.enqueue(script)
        try:
            with httpx.stream(
                "POST", base + GENERATE, json={"prompt": "p", "stream": stream}, timeout=timeout
            ) as response:
                response.read()
        except httpx.ReadTimeout:
            pass  # the client gave up: a disconnect
        expected[row] += 1

    # One at a time: success, errors before and after the first token, timeouts.
    post(Script(), stream=True, row="ok")
    post(Script(), stream=False, row="ok")
    post(Script(status=500), stream=True, row="error")
    post(Script(tokens=["a", "b"], error_after=1), stream=True, row="error")
    post(Script(tokens=["a", "b"], cut_after=1), stream=False, row="error")
    post(Script(hang=True), stream=True, row="timeout")
    post(Script(tokens=["a", "b"], delay_s=0.8), stream=True, row="timeout")

    # Disconnects: before the first token, while streaming, while waiting for a whole answer.
    post(Script(hang=True), stream=True, row="cancelled", timeout=0.3)
    ollama.enqueue(Script(tokens=["x"] * 100, delay_s=0.05))
    with httpx.stream("POST", base + GENERATE, json={"prompt": "p", "stream": True}) as response:
        next(response.iter_lines())
    expected["cancelled"] += 1
    post(Script(tokens=["x"] * 100, delay_s=0.05), stream=False, row="cancelled", timeout=0.3)
    for _ in range(3):
        ollama.wait_for_cancel(timeout=3)

    # Contention: both slots held; a client leaves the queue; two wait in vain; one finds the
    # queue full. The holders run ~2.5 s, longer than everything else here.
    ollama.default_script = Script(tokens=["h"] * 10, delay_s=0.25)
    before = len(ollama.generations)

    async def contention() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def request(row: str, status: int) -> None:
                response = await client.post(GENERATE, json={"prompt": "c"})
                assert response.status_code == status
                expected[row] += 1

            async def leave_while_queued(scope: anyio.CancelScope) -> None:
                with scope:
                    await client.post(GENERATE, json={"prompt": "leaver"})
                expected["cancelled"] += 1

            async def until(want: tuple[int, int]) -> None:
                state = await anyio.to_thread.run_sync(_wait_state, small_server, want, 1.5)
                assert state == want

            async with anyio.create_task_group() as group:
                for _ in range(2):
                    group.start_soon(request, "ok", 200)
                await anyio.to_thread.run_sync(_wait_generations, ollama, before + 2)
                leaver = anyio.CancelScope()
                group.start_soon(leave_while_queued, leaver)
                await until((2, 1))
                leaver.cancel()  # the client leaves while queued: its place is freed at once
                await until((2, 0))
                for _ in range(2):
                    group.start_soon(request, "rejected", 429)  # wait QUEUE_TIMEOUT_S in vain
                await until((2, 2))
                full = await client.post(GENERATE, json={"prompt": "c"})
                assert full.status_code == 429 and full.headers["retry-after"]
                assert "MAX_QUEUED_GENERATIONS" in full.json()["detail"]
                expected["rejected"] += 1

    anyio.run(contention)
    assert len(ollama.generations) == before + 2  # the queued ones never reached Ollama

    _prove_slots_free(small_server, ollama, 2)
    expected["ok"] += 2
    total = sum(expected.values())
    logged = rows(db_url, total, timeout=10)
    time.sleep(0.5)
    assert row_count(db_url) == total
    assert collections.Counter(row.status for row in logged) == expected
