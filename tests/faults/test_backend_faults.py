"""The backend fault matrix over a real ``llmserve serve`` and the Ollama double.

Each fault is injected before the first token or mid-stream, on a streamed and a whole-response
request, and the test checks what the client saw (status, ``Retry-After``, the in-stream
``event: error``), what the request log says, and whether the upstream request was closed.

The server is shared by the module and runs with short timeouts:

* ``FIRST_TOKEN_TIMEOUT_S=1.2``: a hang before the first token is a 504 after 1.2 s;
* ``TOKEN_IDLE_TIMEOUT_S=0.4``: tokens 0.7 s apart (the first one well within 1.2 s) trip it;
* ``REQUEST_TIMEOUT_S=1.2``: tokens every 0.1 s for 4 s exceed it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import Outcome, generate, rows, server_env

FIRST_TOKEN_TIMEOUT_S = 1.2
TOKEN_IDLE_TIMEOUT_S = 0.4
REQUEST_TIMEOUT_S = 1.2


@pytest.fixture(scope="module")
def server(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = server_env(
        database_url,
        ollama_server.base_url,
        FIRST_TOKEN_TIMEOUT_S=FIRST_TOKEN_TIMEOUT_S,
        TOKEN_IDLE_TIMEOUT_S=TOKEN_IDLE_TIMEOUT_S,
        REQUEST_TIMEOUT_S=REQUEST_TIMEOUT_S,
        BACKEND_CONNECT_TIMEOUT_S=1,
    )
    with running_server(env, tmp_path_factory.mktemp("backend-faults"), warm=True) as server:
        yield server


@dataclass
class Fault:
    """One cell of the matrix: how to inject it and what every observer must see."""

    name: str
    inject: Callable[[OllamaDouble], None]
    status: int  # the HTTP status of a whole-response request (and of a stream that fails early)
    code: str  # the error code, in the JSON body or in the stream's error event
    row: str  # the request-log row's status
    mid_stream: bool = False  # a streamed request gets 200, some tokens, then ``event: error``
    retry_after: bool = False
    upstream_closed: bool = False  # llmserve closed the upstream request (the double saw it)
    tokens_before: int = 0  # tokens a stream receives before the error event (at least)
    within_s: float = 1.0  # the client has its answer (or the error event) this soon
    cleanup: Callable[[OllamaDouble], None] = field(default=lambda double: None)


def _script(**kwargs: object) -> Callable[[OllamaDouble], None]:
    return lambda double: double.enqueue(Script(**kwargs))  # type: ignore[arg-type]


FAULTS = [
    Fault(
        "connection refused",
        lambda double: double.set_down(True),
        503,
        "backend_unavailable",
        "error",
        retry_after=True,
        cleanup=lambda double: double.set_down(False),
    ),
    Fault(
        "Ollama 503 busy",
        _script(status=503, error="server busy, please try again.  maximum pending requests"),
        503,
        "backend_busy",
        "error",
        retry_after=True,
    ),
    Fault("Ollama 500 before the stream", _script(status=500), 502, "backend_error", "error"),
    Fault(
        "error line mid-stream",
        _script(tokens=["a", "b", "c", "d"], error_after=2),
        502,
        "backend_stream_error",
        "error",
        mid_stream=True,
        tokens_before=2,
    ),
    Fault(
        "stream cut without done",
        _script(tokens=["a", "b", "c", "d"], cut_after=2),
        502,
        "backend_stream_error",
        "error",
        mid_stream=True,
        tokens_before=2,
    ),
    Fault(
        "hang before the first token",
        _script(hang=True),
        504,
        "backend_timeout",
        "timeout",
        upstream_closed=True,
        within_s=FIRST_TOKEN_TIMEOUT_S + 0.8,
    ),
    Fault(
        "hang between tokens (idle)",
        _script(tokens=["a", "b", "c"], delay_s=0.7),
        504,
        "backend_timeout",
        "timeout",
        mid_stream=True,
        upstream_closed=True,
        tokens_before=1,
        within_s=0.7 + TOKEN_IDLE_TIMEOUT_S + 0.6,
    ),
    Fault(
        "total time exceeded",
        _script(tokens=[f"t{i} " for i in range(40)], delay_s=0.1),
        504,
        "backend_timeout",
        "timeout",
        mid_stream=True,
        upstream_closed=True,
        tokens_before=5,
        within_s=REQUEST_TIMEOUT_S + 0.8,
    ),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault_matrix(
    server: ServerProcess, ollama: OllamaDouble, db_url: str, fault: Fault, stream: bool
) -> None:
    fault.inject(ollama)
    try:
        outcome = generate(server.base_url, stream=stream)
    finally:
        fault.cleanup(ollama)
    assert outcome.elapsed_s < fault.within_s

    if stream and fault.mid_stream:
        _assert_error_event(outcome, fault)
    else:
        assert outcome.status == fault.status, outcome.body
        assert outcome.json()["code"] == fault.code
        assert ("retry-after" in outcome.headers) == fault.retry_after
        if fault.retry_after:
            assert int(outcome.headers["retry-after"]) >= 1

    if fault.upstream_closed:
        record = ollama.wait_for_cancel(timeout=3)
        assert record.cancelled and not record.finished
    (row,) = rows(db_url, 1, request_ids=[outcome.request_id])
    assert row.status == fault.row
    assert row.error
    if stream and fault.mid_stream:
        assert row.completion_tokens >= fault.tokens_before

    # Whatever happened, the next request is served normally (and frees its slot).
    assert generate(server.base_url, stream=stream).status == 200


def _assert_error_event(outcome: Outcome, fault: Fault) -> None:
    assert outcome.status == 200
    events = outcome.events
    *tokens, last = events
    assert len(tokens) >= fault.tokens_before
    assert all(event.name == "message" and "response" in event.data for event in tokens)
    assert last.name == "error"
    assert last.data["code"] == fault.code and last.data["detail"]
    assert "data: {}" not in outcome.body


def test_the_server_keeps_serving_others_during_a_fault(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    """Two requests hang upstream; meanwhile other requests are answered promptly."""
    ollama.enqueue(Script(hang=True), Script(tokens=["a", "b"], delay_s=0.7))
    hung: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda s=s: hung.append(generate(server.base_url, stream=s)))
        for s in (True, True)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.1)  # each takes its script in order
    for _ in range(5):
        ok = generate(server.base_url, stream=True)
        assert ok.completed and ok.elapsed_s < 1.0
    for thread in threads:
        thread.join(10)
    assert sorted(outcome.status for outcome in hung) == [200, 504]


def test_recovers_when_the_backend_returns_without_a_restart(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    pid = server.process.pid
    outcomes = [generate(server.base_url, stream=True)]
    assert outcomes[0].completed
    ollama.set_down(True)
    try:
        for stream in (True, False, True):
            outcomes.append(generate(server.base_url, stream=stream))
            assert outcomes[-1].status == 503 and outcomes[-1].headers["retry-after"]
        ready = httpx.get(server.base_url + "/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["backend"] != "ok"
    finally:
        ollama.set_down(False)
    outcomes.append(generate(server.base_url, stream=True))
    outcomes.append(generate(server.base_url, stream=False))
    assert outcomes[-2].completed and outcomes[-1].status == 200
    assert httpx.get(server.base_url + "/ready", timeout=10).status_code == 200
    assert server.process.pid == pid and server.process.poll() is None
    logged = rows(db_url, 6, request_ids=[outcome.request_id for outcome in outcomes])
    assert [row.status for row in logged] == ["ok", "error", "error", "error", "ok", "ok"]
