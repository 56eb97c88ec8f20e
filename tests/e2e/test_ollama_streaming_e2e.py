"""Ollama's NDJSON streams over real sockets (``llmserve serve`` as a real process): each line
is flushed as it arrives, and a client that leaves stops the generation upstream."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess, running_server
from tests.e2e.test_streaming_e2e import _rows
from tests.fakes.ollama_double import OllamaDouble, Script

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "count"}]}


@pytest.fixture
def server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        yield server


def test_each_line_is_flushed_as_it_arrives(server: ServerProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["one ", "two ", "three"], delay_s=0.25))
    arrivals: list[tuple[float, dict[str, object]]] = []
    with httpx.stream("POST", server.base_url + "/api/chat", json=CHAT, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            arrivals.append((time.monotonic(), json.loads(line)))
    assert [obj["message"]["content"] for _, obj in arrivals] == ["one ", "two ", "three", ""]
    assert arrivals[-1][1]["done"] is True
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)][:2]
    assert all(gap > 0.15 for gap in gaps), f"lines arrived in a burst: {gaps}"


def test_a_client_that_leaves_mid_stream_stops_the_generation_upstream(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(200)], delay_s=0.02))
    with httpx.stream("POST", server.base_url + "/api/chat", json=CHAT, timeout=10) as response:
        for received, _line in enumerate(response.iter_lines(), start=1):
            if received == 5:
                break
    record = ollama.wait_for_cancel(timeout=2.0)
    assert record.cancelled and record.tokens_sent < 200
    (row,) = _rows(db_url, 1)
    assert (row.route, row.status) == ("/api/chat", "cancelled")
    assert 5 <= row.completion_tokens < 200


def test_a_client_that_leaves_before_the_first_token_stops_it_too(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.base_url + "/api/generate",
            json={"model": "llama3.2", "prompt": "x"},
            timeout=0.5,
        )
    assert ollama.wait_for_cancel(timeout=2.0).cancelled
    (row,) = _rows(db_url, 1)
    assert (row.route, row.status) == ("/api/generate", "cancelled")
