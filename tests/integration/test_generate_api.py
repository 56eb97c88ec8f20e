"""POST /api/v1/generate through the app, against the Ollama double."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from llmserve.db import repositories
from llmserve.db.session import make_engine, make_sessions
from tests.fakes.ollama_double import OllamaDouble, Script

URL = "/api/v1/generate"


def sse_events(body: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body; comments are returned as ("comment", text)."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", line[1:].strip()))
            elif line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            events.append((event, "\n".join(data)))
    return events


def wait_for_rows(read: Callable[[], list], count: int, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    rows = read()
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = read()
    return rows


def test_non_streaming_returns_the_whole_text(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["The ", "sky ", "is ", "blue."]))
    response = client.post(URL, json={"prompt": "Why is the sky blue?"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["response"] == "The sky is blue."
    assert body["model"] == "llama3.2"
    assert body["done_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4


def test_streaming_sends_sse_events_and_a_final_empty_object(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["This ", "is ", "a ", "test"]))
    response = client.post(URL, json={"prompt": "hi", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response.text)
    assert [json.loads(data) for _, data in events[:-1]] == [
        {"response": "This "},
        {"response": "is "},
        {"response": "a "},
        {"response": "test"},
    ]
    assert events[-1] == ("message", "{}")
    assert response.text.endswith("data: {}\n\n")


def test_unicode_and_json_special_characters_survive_the_stream(
    client: TestClient, ollama: OllamaDouble
) -> None:
    tokens = ['"quoted"', "\\", "line\nbreak", "é✓🙂", "</script>"]
    ollama.enqueue(Script(tokens=tokens))
    events = sse_events(client.post(URL, json={"prompt": "x", "stream": True}).text)
    assert [json.loads(data)["response"] for _, data in events[:-1]] == tokens


def test_options_and_system_reach_ollama(client: TestClient, ollama: OllamaDouble) -> None:
    client.post(
        URL,
        json={
            "prompt": "hi",
            "system": "be brief",
            "options": {"temperature": 0.1, "max_tokens": 3, "stop": ["x"], "seed": 1},
        },
    )
    sent = [r for r in ollama.requests if r.path == "/api/chat"][-1].json
    assert sent["model"] == "llama3.2"
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert sent["options"] == {"temperature": 0.1, "num_predict": 3, "stop": ["x"], "seed": 1}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "  "},
        {"prompt": "hi", "stream": "yes"},
        {"prompt": "hi", "stream": 1},
        {"prompt": "hi", "steam": True},
        {"prompt": "hi", "options": {"temperature": 3}},
        {"prompt": "hi", "options": {"bogus": 1}},
    ],
)
def test_invalid_requests_get_422_and_never_reach_ollama(
    client: TestClient, ollama: OllamaDouble, body: dict[str, object]
) -> None:
    response = client.post(URL, json=body)
    assert response.status_code == 422
    assert not [r for r in ollama.requests if r.path in ("/api/generate", "/api/chat")]


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(URL, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_prompt_over_the_limit_is_413(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    client = make_client(MAX_PROMPT_CHARS=10)
    assert client.post(URL, json={"prompt": "x" * 10}).status_code == 200
    response = client.post(URL, json={"prompt": "é" * 11})  # characters, not bytes
    assert response.status_code == 413
    assert response.json()["code"] == "prompt_too_large"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stream", [False, True])
def test_backend_down_is_503_with_retry_after(
    make_client: Callable[..., TestClient], stream: bool
) -> None:
    client = make_client(OLLAMA_BASE_URL=f"http://127.0.0.1:{_closed_port()}")
    response = client.post(URL, json={"prompt": "hi", "stream": stream})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["code"] == "backend_unavailable"


@pytest.mark.parametrize("stream", [False, True])
def test_backend_error_before_the_stream_is_502(
    client: TestClient, ollama: OllamaDouble, stream: bool
) -> None:
    ollama.enqueue(Script(status=500, error="llama-server process has terminated"))
    response = client.post(URL, json={"prompt": "hi", "stream": stream})
    assert response.status_code == 502
    assert "llama-server process has terminated" in response.json()["detail"]


def test_backend_busy_is_503(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.enqueue(
        Script(status=503, error="server busy, please try again.  maximum pending requests")
    )
    response = client.post(URL, json={"prompt": "hi", "stream": True})
    assert response.status_code == 503
    assert response.json()["code"] == "backend_busy"


@pytest.mark.parametrize("stream", [False, True])
def test_no_first_token_in_time_is_504(
    make_client: Callable[..., TestClient], ollama: OllamaDouble, stream: bool
) -> None:
    client = make_client(FIRST_TOKEN_TIMEOUT_S=0.3)
    ollama.enqueue(Script(first_token_delay_s=3))
    started = time.monotonic()
    response = client.post(URL, json={"prompt": "hi", "stream": stream})
    assert response.status_code == 504
    assert response.json()["code"] == "backend_timeout"
    assert time.monotonic() - started < 2.5


def test_active_model_not_installed_is_404(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.remove_model("llama3.2")
    response = client.post(URL, json={"prompt": "hi", "stream": True})
    assert response.status_code == 404
    assert response.json()["code"] == "model_not_found"


def test_error_mid_stream_is_an_error_event_without_the_final_object(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(
        Script(tokens=["a", "b", "c", "d"], error_after=2, error="model runner has stopped")
    )
    response = client.post(URL, json={"prompt": "hi", "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [json.loads(d) for _, d in events[:2]] == [{"response": "a"}, {"response": "b"}]
    event, data = events[-1]
    assert event == "error"
    assert "model runner has stopped" in json.loads(data)["detail"]
    assert json.loads(data)["code"] == "backend_stream_error"
    assert "data: {}\n\n" not in response.text


def test_a_stream_cut_without_done_is_an_error_event(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c"], cut_after=1))
    response = client.post(URL, json={"prompt": "hi", "stream": True})
    events = sse_events(response.text)
    assert events[0] == ("message", '{"response":"a"}')
    assert events[-1][0] == "error"
    assert "data: {}\n\n" not in response.text


def test_error_mid_generation_without_stream_is_502(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=1, error="boom"))
    response = client.post(URL, json={"prompt": "hi"})
    assert response.status_code == 502
    assert "boom" in response.json()["detail"]


def test_the_active_model_comes_from_the_database(
    db_url: str, make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    engine = make_engine(db_url)
    with make_sessions(engine).begin() as session:
        repositories.set_setting(session, repositories.ACTIVE_MODEL_KEY, "qwen2.5:0.5b")
    engine.dispose()
    client = make_client()
    body = client.post(URL, json={"prompt": "hi"}).json()
    assert body["model"] == "qwen2.5:0.5b"
    assert [r for r in ollama.requests if r.path == "/api/chat"][-1].json["model"] == (
        "qwen2.5:0.5b"
    )


def test_every_generation_writes_one_log_row(
    make_client: Callable[..., TestClient], ollama: OllamaDouble, log_rows: Callable[[], list]
) -> None:
    client = make_client()
    ollama.enqueue(Script(tokens=["a", "b"], prompt_eval_count=11))
    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=1, error="boom"))
    ollama.enqueue(Script(status=500, error="load failed"))
    assert client.post(URL, json={"prompt": "secret prompt"}).status_code == 200
    client.post(URL, json={"prompt": "hi", "stream": True})
    client.post(URL, json={"prompt": "hi"})
    client.__exit__(None, None, None)  # shutdown flushes the log
    rows = wait_for_rows(log_rows, 3)
    assert [(r.status, r.route, r.model) for r in rows] == [
        ("ok", URL, "llama3.2"),
        ("error", URL, "llama3.2"),
        ("error", URL, "llama3.2"),
    ]
    ok = rows[0]
    assert (ok.prompt_tokens, ok.completion_tokens) == (11, 2)
    assert ok.ttft_ms is not None and ok.duration_ms >= ok.ttft_ms
    assert ok.prompt is None and ok.response is None  # LOG_PROMPTS is off by default
    assert rows[1].completion_tokens == 1 and "boom" in rows[1].error
    assert "load failed" in rows[2].error


def test_log_prompts_stores_the_text(
    make_client: Callable[..., TestClient], ollama: OllamaDouble, log_rows: Callable[[], list]
) -> None:
    client = make_client(LOG_PROMPTS=True)
    ollama.enqueue(Script(tokens=["x", "y"]))
    client.post(URL, json={"prompt": "remember me"})
    client.__exit__(None, None, None)
    (row,) = wait_for_rows(log_rows, 1)
    assert (row.prompt, row.response) == ("remember me", "xy")


def test_health_is_always_ok(make_client: Callable[..., TestClient]) -> None:
    client = make_client(OLLAMA_BASE_URL=f"http://127.0.0.1:{_closed_port()}")
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_when_everything_answers(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "ok", "backend": "ok", "model": "ok"},
    }


def test_not_ready_when_the_backend_is_down(make_client: Callable[..., TestClient]) -> None:
    client = make_client(OLLAMA_BASE_URL=f"http://127.0.0.1:{_closed_port()}")
    response = client.get("/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["backend"].startswith("unavailable")


def test_not_ready_when_the_active_model_is_missing(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.remove_model("llama3.2")
    response = client.get("/ready")
    assert response.status_code == 503
    assert "not installed" in response.json()["checks"]["model"]


def test_not_ready_when_the_schema_is_behind(
    make_client: Callable[..., TestClient], tmp_path
) -> None:
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    client = make_client(DATABASE_URL=url)  # SQLite is migrated at startup ...
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))  # ... now it is not
    engine.dispose()
    response = client.get("/ready")
    assert response.status_code == 503
    assert "llmserve migrate" in response.json()["checks"]["schema"]


def test_openapi_documents_both_media_types_of_generate(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/api/v1/generate"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(content)


def test_a_10_mb_body_is_413_before_it_is_read(client: TestClient, ollama: OllamaDouble) -> None:
    body = b'{"prompt": "' + b"x" * 10_000_000 + b'"}'
    response = client.post(URL, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 500_000
        yield b'"}'

    response = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_prompt_at_the_limit_fits_in_the_body_limit(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    client = make_client(MAX_PROMPT_CHARS=1000)
    prompt = "\u0001" * 1000  # the worst case: every character escaped as \\u0001
    assert client.post(URL, json={"prompt": prompt}).status_code == 200
