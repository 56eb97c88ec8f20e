"""Ollama's pull and create progress over real sockets (``llmserve serve`` as a real process):
each line is flushed as it comes, a failure after the first line is the last line, and a
client that leaves cancels the work upstream."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import AuditRecord
from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble


@pytest.fixture
def server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        yield server


def _audit(db_url: str, timeout: float = 2.0) -> list[tuple[str, str]]:
    """(action, outcome) of the audit rows, once there is one."""
    engine = make_engine(db_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with make_sessions(engine)() as session:
                rows = [(r.action, r.outcome) for r in session.scalars(select(AuditRecord))]
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)
    finally:
        engine.dispose()


def test_pull_progress_lines_are_flushed_as_they_come(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.add_registry_model("mistral:7b")
    ollama.pull_delay_s = 0.2
    arrivals: list[tuple[float, dict[str, object]]] = []
    body = {"model": "mistral:7b"}
    with httpx.stream("POST", server.base_url + "/api/pull", json=body, timeout=10) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            arrivals.append((time.monotonic(), json.loads(line)))
    assert arrivals[-1][1] == {"status": "success"}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)][:3]
    assert all(gap > 0.1 for gap in gaps), f"lines arrived in a burst: {gaps}"


def test_ollama_failing_mid_pull_ends_the_stream_with_an_error_line(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.add_registry_model("mistral:7b")
    ollama.pull_delay_s = 0.3
    body = {"model": "mistral:7b"}
    with httpx.stream("POST", server.base_url + "/api/pull", json=body, timeout=10) as response:
        stream = response.iter_lines()
        assert json.loads(next(stream)) == {"status": "pulling manifest"}
        ollama.set_down()
        rest = [json.loads(line) for line in stream]
    ollama.set_down(False)
    assert rest and list(rest[-1]) == ["error"]
    assert {"status": "success"} not in rest


def test_a_client_leaving_mid_pull_cancels_it_upstream(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.add_registry_model("mistral:7b")
    ollama.pull_delay_s = 0.05
    body = {"model": "mistral:7b"}
    with httpx.stream("POST", server.base_url + "/api/pull", json=body, timeout=10) as response:
        next(response.iter_lines())
    record = ollama.wait_for_pull_cancel(timeout=2.0)
    assert record.cancelled and "success" not in record.statuses
    assert "mistral:7b" not in ollama.models
    assert _audit(db_url) == [("pull", "cancelled")]


def test_a_client_leaving_mid_create_cancels_it_upstream(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.pull_delay_s = 0.1
    body = {"model": "mario", "from": "llama3.2", "system": "You are Mario."}
    with httpx.stream("POST", server.base_url + "/api/create", json=body, timeout=10) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 2
    while not ollama.creates[-1].cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ollama.creates[-1].cancelled and not ollama.creates[-1].finished
    assert "mario:latest" not in ollama.models
    assert _audit(db_url) == [("create", "cancelled")]
