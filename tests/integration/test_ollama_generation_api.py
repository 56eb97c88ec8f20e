"""Ollama's generation API served by llmserve (``/api/generate``, ``/api/chat``, ``/api/embed``,
``/api/embeddings``), through the app against the Ollama double: Ollama's framing, fields,
counters and errors, and what reaches Ollama untouched."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmserve.db.tables import RequestLogRecord
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.integration.test_generate_api import wait_for_rows

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
COUNTERS = ("total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def lines(response: Any) -> list[dict[str, Any]]:
    """The NDJSON objects of a response; every line must be one compact object."""
    text = response.text
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def upstream(ollama: OllamaDouble, path: str) -> dict[str, Any]:
    return [r.json for r in ollama.requests if r.path == path][-1]


def test_chat_streams_ndjson_lines_then_a_final_object_with_the_counters(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Hel", "lo", "!"], prompt_eval_count=9))
    response = client.post(
        "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    objects = lines(response)
    *chunks, last = objects
    assert [c["message"] for c in chunks] == [
        {"role": "assistant", "content": piece} for piece in ("Hel", "lo", "!")
    ]
    for chunk in chunks:
        assert chunk["model"] == "llama3.2"  # the name as sent: no ":latest" added
        assert chunk["done"] is False
        assert CREATED_AT.match(chunk["created_at"])
        assert not set(COUNTERS) & set(chunk)
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert last["prompt_eval_count"] == 9 and last["eval_count"] == 3
    for name in ("total_duration", "eval_duration", "prompt_eval_duration"):
        assert isinstance(last[name], int) and last[name] > 0
    assert last["total_duration"] >= last["eval_duration"]


def test_chat_with_stream_false_is_one_object(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["Hel", "lo"]))
    response = client.post(
        "/api/chat",
        json={"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": "Hello"}
    assert body["done"] is True and body["done_reason"] == "stop"
    assert body["eval_count"] == 2 and body["total_duration"] > 0


def test_generate_goes_to_ollamas_generate_with_its_own_fields_untouched(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.add_model("coder:1b", capabilities=("completion", "insert"))
    request = {
        "model": "coder:1b",
        "prompt": "def add(a, b):",
        "suffix": "\n    return c",
        "options": {"num_ctx": 8192, "min_p": 0.05, "num_gpu": 99, "temperature": 0.1},
        "keep_alive": "10m",
        "stream": False,
        "unknown_field": "ignored, as Ollama does",
    }
    response = client.post("/api/generate", content=json.dumps(request))  # no Content-Type
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "coder:1b" and body["done"] is True
    assert isinstance(body["response"], str) and body["response"]
    assert isinstance(body["context"], list)  # Ollama's context comes back
    sent = upstream(ollama, "/api/generate")
    assert sent["prompt"] == "def add(a, b):" and sent["suffix"] == "\n    return c"
    assert sent["options"] == {"num_ctx": 8192, "min_p": 0.05, "num_gpu": 99, "temperature": 0.1}
    assert sent["keep_alive"] == "10m"
    assert "unknown_field" not in sent


def test_generate_streams_response_fields_and_raw_and_system_pass_through(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b"]))
    response = client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "[INST] hi [/INST]", "raw": True}
    )
    *chunks, last = lines(response)
    assert [c["response"] for c in chunks] == ["a", "b"]
    assert last["response"] == "" and last["done"] is True
    assert "context" not in last  # raw mode has none, as Ollama's
    assert upstream(ollama, "/api/generate")["raw"] is True
    ollama.enqueue(Script(tokens=["c"]))
    client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi", "system": "Be terse."})
    assert upstream(ollama, "/api/generate")["system"] == "Be terse."


def test_think_streams_thinking_apart_from_the_answer(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.add_model("qwen3:4b", capabilities=("completion", "thinking"))
    ollama.enqueue(Script(thinking=["Let me ", "see."], tokens=["42"]))
    response = client.post(
        "/api/chat",
        json={"model": "qwen3:4b", "think": True, "messages": [{"role": "user", "content": "?"}]},
    )
    *chunks, _ = lines(response)
    assert [c["message"].get("thinking") for c in chunks] == ["Let me ", "see.", None]
    assert [c["message"]["content"] for c in chunks] == ["", "", "42"]
    assert upstream(ollama, "/api/chat")["think"] is True
    ollama.enqueue(Script(thinking=["Hm."], tokens=["42"]))
    whole = client.post(
        "/api/generate",
        json={"model": "qwen3:4b", "think": "high", "prompt": "?", "stream": False},
    ).json()
    assert whole["thinking"] == "Hm." and whole["response"] == "42"


def test_tool_calls_come_back_whole_with_ids_and_the_round_trip_reaches_ollama(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    response = client.post(
        "/api/chat", json={"model": "llama3.2", "messages": messages, "tools": [WEATHER]}
    )
    *chunks, last = lines(response)
    calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
    assert len(calls) == 1
    call = calls[0]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}  # an object, never a string
    sent_call = ollama.generations[-1].tool_calls_sent[0]
    assert call["id"] == sent_call["id"]  # Ollama's own id, kept
    assert last["done_reason"] == "tool_calls"
    assert upstream(ollama, "/api/chat")["tools"] == [WEATHER]

    messages += [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ]
    ollama.enqueue(Script(tokens=["Mild."]))
    answer = client.post(
        "/api/chat",
        json={"model": "llama3.2", "messages": messages, "tools": [WEATHER], "stream": False},
    )
    assert answer.json()["message"]["content"] == "Mild."
    sent = upstream(ollama, "/api/chat")["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": call["id"], "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}


def test_images_format_and_options_reach_ollama_untouched(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.add_model("llava:7b", capabilities=("completion", "vision"))
    schema = {"type": "object", "properties": {"animal": {"type": "string"}}}
    response = client.post(
        "/api/chat",
        json={
            "model": "llava:7b",
            "stream": False,
            "format": schema,
            "options": {"num_ctx": 4096, "seed": 3, "stop": ["\n\n"], "mirostat": 2},
            "keep_alive": -1,
            "messages": [{"role": "USER", "content": "What is it?", "images": [PNG]}],
        },
    )
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["message"]["content"])  # the double's JSON for the schema
    sent = upstream(ollama, "/api/chat")
    assert sent["format"] == schema
    assert sent["options"] == {"num_ctx": 4096, "seed": 3, "stop": ["\n\n"], "mirostat": 2}
    assert sent["keep_alive"] == -1
    assert sent["messages"] == [{"role": "user", "content": "What is it?", "images": [PNG]}]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_nothing_to_generate_loads_the_model_and_keep_alive_zero_unloads_it(
    client: TestClient, ollama: OllamaDouble, path: str
) -> None:
    response = client.post(path, json={"model": "qwen2.5:0.5b"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["done"] is True and body["done_reason"] == "load"
    assert body["model"] == "qwen2.5:0.5b" and not set(COUNTERS) & set(body)
    assert any(name.startswith("qwen2.5") for name in ollama.loaded)
    unloaded = client.post(path, json={"model": "qwen2.5:0.5b", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert not any(name.startswith("qwen2.5") for name in ollama.loaded)
    assert ollama.generations == []  # nothing was generated


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/generate", {"prompt": "hi"}, 404, "model '' not found"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/generate", {"model": "nope", "prompt": "hi"}, 404, "model 'nope' not found"),
        ("/api/chat", {"model": "nope:7b", "messages": []}, 404, "model 'nope:7b' not found"),
        ("/api/chat", {"model": "bad name!", "messages": []}, 400, "invalid model name"),
        ("/api/chat", {"model": "llama3.2", "keep_alive": "300"}, 400, "missing unit"),
        ("/api/generate", {"model": "llama3.2", "format": "xml"}, 400, "invalid format"),
        ("/api/chat", {"model": "llama3.2", "think": "very"}, 400, "think"),
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
    ],
)
def test_refusals_are_ollamas_error_objects_and_never_reach_it(
    client: TestClient,
    ollama: OllamaDouble,
    path: str,
    body: dict[str, Any],
    status: int,
    error: str,
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    payload = response.json()
    assert list(payload) == ["error"] and error in payload["error"]
    assert ollama.generations == [] and ollama.embeddings == []


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'{"model": 3}'])
def test_bodies_that_cannot_be_read_are_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/chat", content=raw)
    assert response.status_code == 400
    assert list(response.json()) == ["error"]
    if not raw:
        assert response.json() == {"error": "missing request body"}


def test_an_error_after_the_first_line_is_a_last_error_line_without_done(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2))
    response = client.post(
        "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    )
    objects = lines(response)
    assert [o["message"]["content"] for o in objects[:-1]] == ["a", "b"]
    assert list(objects[-1]) == ["error"]
    assert not any(o.get("done") for o in objects)


def test_an_error_before_the_first_line_keeps_its_status(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(status=500, error="llama-server process has terminated"))
    response = client.post(
        "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 502
    assert "llama-server process has terminated" in response.json()["error"]


def test_every_generation_is_logged_and_counted_under_its_ollama_route(
    client: TestClient,
    ollama: OllamaDouble,
    log_rows: Callable[[], list[RequestLogRecord]],
) -> None:
    client.post(
        "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    )
    client.post("/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "x", "stream": False})
    client.post("/api/embed", json={"model": "llama3.2", "input": ["a", "b"]})
    metrics = client.get("/metrics").text
    for route in ("/api/chat", "/api/generate", "/api/embed"):
        assert f'llmserve_generations_total{{route="{route}",status="ok"}} 1.0' in metrics
    rows = wait_for_rows(log_rows, 3)
    assert [(row.route, row.model, row.status) for row in rows] == [
        ("/api/chat", "llama3.2", "ok"),  # the active model, by its stored name
        ("/api/generate", "qwen2.5:0.5b", "ok"),  # the installed model the name means
        ("/api/embed", "llama3.2", "ok"),
    ]


def test_embed_and_the_legacy_embeddings_answer_as_ollama(
    client: TestClient, ollama: OllamaDouble
) -> None:
    body = client.post(
        "/api/embed",
        json={"model": "llama3.2", "input": ["a", "b"], "truncate": False, "keep_alive": "1m"},
    ).json()
    assert body["model"] == "llama3.2" and len(body["embeddings"]) == 2
    assert isinstance(body["prompt_eval_count"], int)
    sent = upstream(ollama, "/api/embed")
    assert sent["truncate"] is False and sent["keep_alive"] == "1m"
    assert (
        client.post("/api/embed", json={"model": "llama3.2", "input": ""}).json()["embeddings"]
        == []
    )
    legacy = client.post("/api/embeddings", json={"model": "llama3.2", "prompt": "a"}).json()
    assert list(legacy) == ["embedding"] and len(legacy["embedding"]) > 1
    assert client.post("/api/embeddings", json={"model": "llama3.2", "prompt": ""}).json() == {
        "embedding": []
    }
    missing = client.post("/api/embeddings", json={"model": "nope", "prompt": "a"})
    assert missing.status_code == 404
    assert missing.json() == {"error": 'model "nope" not found, try pulling it first'}


def test_with_auth_every_ollama_route_but_the_probes_needs_a_key_and_answers_ollamas_shape(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(AUTH_REQUIRED=True)
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
        response = client.post(path, json={"model": "llama3.2"})
        assert response.status_code == 401, path
        assert list(response.json()) == ["error"]
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_ollamas_own_400_is_a_400_with_its_words(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(status=400, error="something Ollama alone checks"))
    response = client.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Ollama refused the request: something Ollama alone checks"}


def test_raw_mode_with_a_system_prompt_is_refused_before_ollama_in_its_words(
    client: TestClient, ollama: OllamaDouble
) -> None:
    before = len(ollama.generations)
    response = client.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": "hi", "raw": True, "system": "x", "stream": False},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "raw mode does not support template, system, or context"}
    assert len(ollama.generations) == before


def test_a_full_admission_queue_is_429_in_ollamas_shape_and_the_slot_comes_back(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    client = make_client(MAX_CONCURRENT_GENERATIONS=1, MAX_QUEUED_GENERATIONS=0)
    ollama.enqueue(Script(tokens=["t"] * 40, delay_s=0.05))
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    with client.stream("POST", "/api/chat", json=chat) as holder:
        assert holder.status_code == 200
        full = client.post("/api/chat", json=chat)
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        assert list(full.json()) == ["error"]
        for _ in holder.iter_lines():
            pass
    assert client.post("/api/chat", json={**chat, "stream": False}).status_code == 200


def test_tool_calls_sent_without_an_id_reach_ollama_without_one(
    client: TestClient, ollama: OllamaDouble
) -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "-3 degrees", "tool_name": "get_weather"},
    ]
    body = {"model": "llama3.2", "messages": messages, "tools": [WEATHER], "stream": False}
    assert client.post("/api/chat", json=body).status_code == 200
    sent = upstream(ollama, "/api/chat")["messages"]
    assert sent[1]["tool_calls"] == [call]  # no id made up for Ollama
    assert sent[2] == {"role": "tool", "content": "-3 degrees", "tool_name": "get_weather"}
