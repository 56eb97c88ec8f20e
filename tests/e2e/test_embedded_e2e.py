"""The embedded engine end to end: real uvicorn, llama.cpp in-process, the real 270M model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from tests._server import ServerProcess, running_server

pytestmark = pytest.mark.embedded
URL = "/api/v1/generate"
PROMPT = "Why is the sky blue?"


@pytest.fixture(scope="module")
def built_in_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmserve.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend()
    return Path(backend.built_in_path)


@pytest.fixture(scope="module")
def embedded_env(tmp_path_factory: pytest.TempPathFactory, built_in_gguf: Path) -> dict[str, str]:
    home = tmp_path_factory.mktemp("embedded")
    models = home / "models"
    models.mkdir()
    shutil.copy(built_in_gguf, models / "gemma-copy.gguf")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return {
        **keep,
        "LLM_BACKEND": "embedded",
        "DATABASE_URL": f"sqlite:///{home / 'llmserve.db'}",
        "EMBEDDED_MODELS_DIR": str(models),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def server(
    embedded_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running_server(embedded_env, tmp_path_factory.mktemp("cwd"), warm=True) as server:
        yield server


def _rows(url: str) -> list[RequestLogRecord]:
    engine = make_engine(url)
    try:
        with make_sessions(engine)() as session:
            return list(session.scalars(select(RequestLogRecord).order_by(RequestLogRecord.id)))
    finally:
        engine.dispose()


def test_non_streamed_generation_returns_real_text(server: ServerProcess) -> None:
    body = {"prompt": PROMPT, "options": {"max_tokens": 24, "temperature": 0}}
    response = httpx.post(server.base_url + URL, json=body, timeout=120)
    assert response.status_code == 200, response.text
    text = response.json()["response"]
    assert len(text.strip()) > 10
    assert any(c.isalpha() for c in text)


def test_streamed_generation_returns_real_text(server: ServerProcess) -> None:
    body = {"prompt": PROMPT, "stream": True, "options": {"max_tokens": 24}}
    pieces = []
    with httpx.stream("POST", server.base_url + URL, json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: {}"
    for line in lines[:-1]:
        pieces.append(json.loads(line[len("data: ") :])["response"])
    assert len(pieces) > 3
    assert len("".join(pieces).strip()) > 10


def test_disconnect_mid_stream_stops_the_engine_within_a_second(
    server: ServerProcess, embedded_env: dict[str, str]
) -> None:
    body = {"prompt": "Tell me a long story about the sea.", "stream": True}
    body["options"] = {"max_tokens": 2000}
    with httpx.stream("POST", server.base_url + URL, json=body, timeout=120) as response:
        request_id = response.headers["x-request-id"]  # rows of earlier tests may land later
        received = 0
        for line in response.iter_lines():
            received += line.startswith("data: ")
            if received == 3:
                break
    left_at = time.monotonic()
    deadline = left_at + 5
    while time.monotonic() < deadline:
        rows = [r for r in _rows(embedded_env["DATABASE_URL"]) if r.request_id == request_id]
        if rows:
            break
        time.sleep(0.02)
    stopped_after = time.monotonic() - left_at
    (row,) = rows
    assert row.status == "cancelled"
    assert 3 <= row.completion_tokens < 2000
    # The row is written after the engine's worker has stopped.
    assert stopped_after < 1.0, f"the engine stopped {stopped_after:.2f} s after the disconnect"
    # ... and the engine is free for the next request at once.
    quick = {"prompt": "Say hi.", "options": {"max_tokens": 4}}
    assert httpx.post(server.base_url + URL, json=quick, timeout=60).status_code == 200


def test_switching_between_two_gguf_files(server: ServerProcess) -> None:
    listed = httpx.get(server.base_url + "/api/v1/models").json()
    names = {m["name"] for m in listed["models"]}
    assert "gemma-copy" in names and listed["active"] in names
    built_in = next(m["name"] for m in listed["models"] if m["built_in"])
    assert httpx.post(server.base_url + "/api/v1/models/switch/gemma-copy").status_code == 200
    body = {"prompt": PROMPT, "options": {"max_tokens": 8}}
    response = httpx.post(server.base_url + URL, json=body, timeout=120)
    assert response.json()["model"] == "gemma-copy"
    assert response.json()["response"].strip()
    assert httpx.delete(f"{server.base_url}/api/v1/models/{built_in}").status_code == 403
    assert httpx.post(f"{server.base_url}/api/v1/models/switch/{built_in}").status_code == 200


def test_cli_generate_streams_real_text(embedded_env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmserve", "generate", PROMPT, "--max-tokens", "16"],
        env=embedded_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 5


def test_the_openai_sdk_works_on_the_embedded_engine(server: ServerProcess) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    active = httpx.get(server.base_url + "/api/v1/models/active").json()["model"]
    reply = client.chat.completions.create(
        model=active, messages=[{"role": "user", "content": PROMPT}], max_tokens=12
    )
    assert reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model=active,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=12,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_chat_answers_json_that_validates_against_the_schema(server: ServerProcess) -> None:
    import jsonschema

    messages = [
        {"role": "system", "content": "You describe people as JSON."},
        {"role": "user", "content": "Describe a person."},
    ]
    body = {"messages": messages, "format": PERSON, "options": {"max_tokens": 48}}
    answer = httpx.post(f"{server.base_url}/api/v1/chat", json=body, timeout=120).json()
    jsonschema.validate(json.loads(answer["message"]["content"]), PERSON)


def test_openai_tool_choice_forces_a_call_on_the_real_model(server: ServerProcess) -> None:
    tool = {"type": "function", "function": {"name": "describe_person", "parameters": PERSON}}
    body = {
        "model": "gemma-copy",
        "messages": [{"role": "user", "content": "Invent a person."}],
        "tools": [tool],
        "tool_choice": "required",
        "max_tokens": 48,
    }
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "describe_person"
    import jsonschema

    jsonschema.validate(json.loads(call["function"]["arguments"]), PERSON)
    body["tool_choice"] = "auto"
    refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported"


def test_embeddings_from_the_real_model(server: ServerProcess) -> None:
    answer = httpx.post(
        f"{server.base_url}/api/v1/embed", json={"input": ["a cat", "a dog"]}, timeout=120
    ).json()
    first, second = answer["embeddings"]
    assert len(first) == len(second) == 640 and first != second
    assert abs(sum(x * x for x in first) - 1.0) < 1e-3
    assert answer["usage"]["prompt_tokens"] > 0


def test_a_schema_the_grammar_cannot_enforce_is_refused(server: ServerProcess) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer", "maximum": 120}}}
    body = {"messages": [{"role": "user", "content": "x"}], "format": schema}
    refused = httpx.post(f"{server.base_url}/api/v1/chat", json=body, timeout=120)
    assert refused.status_code == 400
    assert refused.json()["code"] == "unsupported" and "maximum" in refused.json()["detail"]


def _active(server: ServerProcess) -> str:
    return str(httpx.get(server.base_url + "/api/v1/models/active").json()["model"])


def test_ollamas_chat_streams_real_text_from_the_embedded_engine(server: ServerProcess) -> None:
    model = _active(server)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "options": {"num_predict": 16, "num_thread": 2, "use_mmap": True},  # runner options: moot
        "think": False,
    }
    with httpx.stream("POST", server.base_url + "/api/chat", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        objects = [json.loads(line) for line in response.iter_lines()]
    *chunks, last = objects
    assert len(chunks) > 3 and all(c["done"] is False for c in chunks)
    assert len("".join(c["message"]["content"] for c in chunks).strip()) > 10
    assert last["done"] is True and last["done_reason"] in ("stop", "length")
    assert last["eval_count"] > 0 and last["prompt_eval_count"] > 0


@pytest.mark.parametrize(
    ("path", "extra", "named"),
    [
        ("/api/chat", {"think": True}, "'think'"),
        ("/api/chat", {"options": {"min_p": 0.1}}, "'min_p'"),
        ("/api/generate", {"raw": True}, "'raw'"),
        ("/api/generate", {"keep_alive": "5m"}, "keep_alive"),
    ],
)
def test_what_only_ollama_has_is_refused_in_ollamas_shape_naming_it(
    server: ServerProcess, path: str, extra: dict[str, object], named: str
) -> None:
    body: dict[str, object] = {"model": _active(server), **extra}
    if path == "/api/chat":
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    response = httpx.post(server.base_url + path, json=body, timeout=60)
    assert response.status_code == 400
    assert list(response.json()) == ["error"] and named in response.json()["error"]
