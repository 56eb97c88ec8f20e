"""Streaming, pings and disconnects over real sockets: ``llmserve serve`` as a real process."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script

URL = "/api/v1/generate"


@pytest.fixture
def server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(
        {**subprocess_env, "SSE_PING_INTERVAL_S": "0.3"}, tmp_path, warm=True
    ) as server:
        yield server


def _rows(db_url: str, count: int, timeout: float = 5.0) -> list[RequestLogRecord]:
    engine = make_engine(db_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with make_sessions(engine)() as session:
                rows = list(session.scalars(select(RequestLogRecord).order_by(RequestLogRecord.id)))
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        engine.dispose()


def test_each_token_is_flushed_as_it_arrives(server: ServerProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["one ", "two ", "three"], delay_s=0.25))
    arrivals: list[tuple[float, str]] = []
    with httpx.stream(
        "POST", server.base_url + URL, json={"prompt": "count", "stream": True}, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line))
    assert [line for _, line in arrivals] == [
        'data: {"response":"one "}',
        'data: {"response":"two "}',
        'data: {"response":"three"}',
        "data: {}",
    ]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)][:2]
    assert all(gap > 0.15 for gap in gaps), f"tokens arrived in a burst: {gaps}"


def test_a_ping_comment_is_sent_during_silence(server: ServerProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["a", "b"], delay_s=1.0))
    with httpx.stream(
        "POST", server.base_url + URL, json={"prompt": "x", "stream": True}, timeout=10
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert ": ping" in lines
    assert lines[-1] == "data: {}"
    data = [line for line in lines if line.startswith("data: ")]
    assert data == ['data: {"response":"a"}', 'data: {"response":"b"}', "data: {}"]


def test_no_ping_while_tokens_flow(server: ServerProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["t"] * 20, delay_s=0.05))
    with httpx.stream(
        "POST", server.base_url + URL, json={"prompt": "x", "stream": True}, timeout=10
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert ": ping" not in lines


def test_client_disconnect_mid_stream_cancels_upstream_and_logs_cancelled(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(200)], delay_s=0.02))
    with httpx.stream(
        "POST", server.base_url + URL, json={"prompt": "long", "stream": True}, timeout=10
    ) as response:
        received = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received == 5:
                break
    record = ollama.wait_for_cancel(timeout=2.0)
    assert record.cancelled and record.tokens_sent < 200
    (row,) = _rows(db_url, 1)
    assert row.status == "cancelled"
    assert 5 <= row.completion_tokens < 200


def test_client_disconnect_before_the_first_token_cancels_upstream(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + URL, json={"prompt": "x", "stream": True}, timeout=0.5)
    assert ollama.wait_for_cancel(timeout=2.0).cancelled
    (row,) = _rows(db_url, 1)
    assert row.status == "cancelled"


def test_client_disconnect_while_waiting_for_a_whole_response_cancels_upstream(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(200)], delay_s=0.02))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + URL, json={"prompt": "x"}, timeout=0.5)
    record = ollama.wait_for_cancel(timeout=2.0)
    assert 0 < record.tokens_sent < 200
    (row,) = _rows(db_url, 1)
    assert row.status == "cancelled"
    assert row.completion_tokens > 0


def test_half_closed_socket_mid_stream_is_a_cancellation(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["x"] * 500, delay_s=0.01))
    host, port = server.base_url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "x", "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"200 OK" in sock.recv(4096)
    assert ollama.wait_for_cancel(timeout=2.0).tokens_sent < 500


def test_the_server_keeps_serving_after_failures(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(status=500, error="x"))
    ollama.enqueue(Script(tokens=["a", "b"], cut_after=1))
    assert httpx.post(server.base_url + URL, json={"prompt": "x"}, timeout=5).status_code == 502
    httpx.post(server.base_url + URL, json={"prompt": "x", "stream": True}, timeout=5)
    ok = httpx.post(server.base_url + URL, json={"prompt": "x"}, timeout=5)
    assert ok.status_code == 200 and ok.json()["response"]


def test_sigterm_exits_cleanly_with_every_row_written(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        for _ in range(5):
            httpx.post(server.base_url + URL, json={"prompt": "x"}, timeout=5)
        assert server.stop() == 0
    assert len(_rows(db_url, 5, timeout=0.5)) == 5
