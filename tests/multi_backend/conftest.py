"""Three Ollama doubles on loopback and a real ``llmserve serve`` routed over all three."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble
from tests.faults._tools import server_env

BUILT_IN = "llama3.2"
HEALTH_INTERVAL_S = 0.5


@pytest.fixture(scope="package")
def doubles() -> Iterator[list[OllamaDouble]]:
    started = [OllamaDouble([BUILT_IN]).start() for _ in range(3)]
    try:
        yield started
    finally:
        for double in started:
            double.stop()


@pytest.fixture
def trio(doubles: list[OllamaDouble]) -> Iterator[list[OllamaDouble]]:
    """The three doubles, up, with only the built-in model and fresh scripts and records."""
    for double in doubles:
        if double.is_down:
            double.set_down(False)
        double.reset()
        for name in double.models:
            double.remove_model(name)
        double.add_model(BUILT_IN)
    yield doubles
    for double in doubles:
        if double.is_down:
            double.set_down(False)


@pytest.fixture
def start_server(
    db_url: str, trio: list[OllamaDouble], tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(**settings)``: ``llmserve serve`` with OLLAMA_BASE_URL listing the three
    doubles; stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(**settings: object) -> ServerProcess:
            urls = ",".join(double.base_url for double in trio)
            env = server_env(db_url, urls, BACKEND_HEALTH_INTERVAL_S=HEALTH_INTERVAL_S, **settings)
            return stack.enter_context(running_server(env, tmp_path))

        yield start


@dataclass
class StreamOutcome:
    """What one streamed ``/api/v1/generate`` request saw."""

    status: int
    tokens: list[str] = field(default_factory=list)
    error: dict[str, object] | None = None
    done: bool = False
    started_at: float = 0.0
    first_token_at: float | None = None


async def stream_generate(client: httpx.AsyncClient, prompt: str = "hi") -> StreamOutcome:
    outcome = StreamOutcome(status=0, started_at=time.monotonic())
    body = {"prompt": prompt, "stream": True}
    async with client.stream("POST", "/api/v1/generate", json=body) as response:
        outcome.status = response.status_code
        if response.status_code != 200:
            await response.aread()
            try:
                outcome.error = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                outcome.error = {"body": response.text}
            return outcome
        event = "message"
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
                if event == "error":
                    outcome.error = data
                elif data == {}:
                    outcome.done = True
                else:
                    if outcome.first_token_at is None:
                        outcome.first_token_at = time.monotonic()
                    outcome.tokens.append(data["response"])
                event = "message"
    return outcome


def run_streams(base_url: str, count: int, **kwargs: object) -> list[StreamOutcome]:
    """``count`` concurrent streams; their outcomes in order."""

    async def main() -> list[StreamOutcome]:
        limits = httpx.Limits(max_connections=count + 8)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(stream_generate(client) for _ in range(count)))

    return asyncio.run(main())


def backend_states(base_url: str) -> dict[str, dict[str, object]]:
    response = httpx.get(base_url + "/ready", timeout=10)
    backends: dict[str, dict[str, object]] = response.json()["backends"]
    return backends


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``check()`` held (polled every 20 ms); fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started
