"""X-Request-ID on every response, carried into log lines and the request-log row."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from llmserve.logging_setup import JsonFormatter, _RequestIdFilter
from tests.fakes.ollama_double import OllamaDouble, Script


def test_a_sane_id_is_echoed_and_others_are_replaced(client: TestClient) -> None:
    assert (
        client.get("/health", headers={"X-Request-ID": "abc-123.x:y"}).headers["x-request-id"]
        == "abc-123.x:y"
    )
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        got = client.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and len(got) == 32
    one = client.get("/health").headers["x-request-id"]
    two = client.get("/health").headers["x-request-id"]
    assert one != two


def test_errors_and_refusals_carry_it_too(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    client = make_client(AUTH_REQUIRED=True)
    assert "x-request-id" in client.get("/api/v1/models").headers  # 401 from the middleware
    big = client.post("/api/v1/generate", content=b"x" * 3_000_000)
    assert big.status_code == 413 and "x-request-id" in big.headers


def test_the_request_log_row_and_log_lines_carry_it(
    make_client: Callable[..., TestClient],
    ollama: OllamaDouble,
    log_rows: Callable[[], list],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client()
    ollama.enqueue(Script(tokens=["a", "b"]))
    ollama.enqueue(Script(tokens=["a", "b"], error_after=1, error="boom"))
    caplog.handler.addFilter(_RequestIdFilter())
    with caplog.at_level(logging.INFO):
        client.post("/api/v1/generate", json={"prompt": "x"}, headers={"X-Request-ID": "req-1"})
        client.post(
            "/api/v1/generate",
            json={"prompt": "x", "stream": True},
            headers={"X-Request-ID": "req-2"},
        )
    client.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while len(rows := log_rows()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.request_id for r in rows] == ["req-1", "req-2"]
    (warning,) = [r for r in caplog.records if "boom" in r.getMessage()]
    assert warning.request_id == "req-2"


def test_json_log_lines() -> None:
    record = logging.LogRecord(
        "llmserve.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    _RequestIdFilter().filter(record)
    line = JsonFormatter().format(record)
    payload = json.loads(line)
    assert payload["message"] == "hello you" and payload["level"] == "WARNING"
    assert payload["request_id"] == "-" and payload["logger"] == "llmserve.x"
