"""POST /api/v1/chat and /api/v1/embed through the app, against the Ollama double: the
conversation, tools, images and format reach Ollama in its own form, nothing flattened or
dropped, and tool calls come back in the native shape."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fakes.ollama_double import OllamaDouble, Script
from tests.integration.test_generate_api import sse_events, wait_for_rows

CHAT = "/api/v1/chat"
EMBED = "/api/v1/embed"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


def chat_bodies(ollama: OllamaDouble) -> list[dict[str, Any]]:
    return [r.json for r in ollama.requests if r.path == "/api/chat"]


def test_a_conversation_with_tools_images_and_options_reaches_ollama_whole(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.add_model("llava:7b", capabilities=("completion", "vision", "tools"))
    assert client.post("/api/v1/models/switch/llava:7b").status_code == 200
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is in this picture?", "images": [PNG]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1"},
    ]
    options = {"temperature": 0.2, "num_ctx": 8192, "repeat_penalty": 1.1, "keep_alive": "10m"}
    response = client.post(
        CHAT, json={"messages": messages, "tools": [WEATHER], "options": options}
    )
    assert response.status_code == 200, response.text
    sent = chat_bodies(ollama)[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is in this picture?", "images": [PNG]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {
            "role": "tool",
            "content": "18 C, sunny",
            "tool_call_id": "call_1",
            "tool_name": "get_weather",
        },
    ]
    assert sent["tools"] == [WEATHER]
    assert sent["options"] == {"temperature": 0.2, "num_ctx": 8192, "repeat_penalty": 1.1}
    assert sent["keep_alive"] == "10m"  # Ollama reads it at the top level


@pytest.mark.parametrize("style", ["current", "index", "bare"])
def test_tool_calls_come_back_whole_with_ids_and_done_reason_tool_calls(
    client: TestClient, ollama: OllamaDouble, style: str
) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {"zone": "CET"}},
    ]
    ollama.enqueue(Script(tokens=[], tool_calls=calls, tool_call_style=style))
    body = client.post(
        CHAT, json={"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER, TIME]}
    ).json()
    assert body["done_reason"] == "tool_calls"  # Ollama itself says "stop"
    got = body["message"]["tool_calls"]
    assert [(c["type"], c["function"]) for c in got] == [("function", c) for c in calls]
    assert all(c["id"].startswith("call_") for c in got)  # made up when Ollama gives none
    assert len({c["id"] for c in got}) == 2
    if style == "current":
        sent = ollama.generations[-1].tool_calls_sent
        assert [c["id"] for c in got] == [c["id"] for c in sent]


@pytest.mark.parametrize("chunks", ["each", "together"])
def test_streamed_tool_calls_are_one_event_before_the_end(
    client: TestClient, ollama: OllamaDouble, chunks: str
) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {"zone": "CET"}},
    ]
    ollama.enqueue(Script(tokens=["Let ", "me ", "look."], tool_calls=calls, tool_chunks=chunks))
    response = client.post(
        CHAT,
        json={
            "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER, TIME],
            "stream": True,
        },
    )
    events = [json.loads(data) for _, data in sse_events(response.text)]
    assert [e["response"] for e in events[:3]] == ["Let ", "me ", "look."]
    assert [c["function"] for c in events[3]["tool_calls"]] == calls
    assert events[4:] == [{}]


def test_a_forced_tool_goes_to_ollama_as_a_schema_and_returns_as_a_call(
    client: TestClient, ollama: OllamaDouble
) -> None:
    body = client.post(
        CHAT,
        json={
            "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    ).json()
    sent = chat_bodies(ollama)[-1]
    assert "tools" not in sent
    assert sent["format"] == WEATHER["function"]["parameters"]
    assert "get_weather" in sent["messages"][-1]["content"]
    assert body["done_reason"] == "tool_calls"
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"]["city"], str)


def test_required_tool_choice_lets_the_model_pick_among_the_tools(
    client: TestClient, ollama: OllamaDouble
) -> None:
    body = client.post(
        CHAT,
        json={
            "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER, TIME],
            "tool_choice": "required",
        },
    ).json()
    names = [v["properties"]["name"]["const"] for v in chat_bodies(ollama)[-1]["format"]["anyOf"]]
    assert names == ["get_weather", "get_time"]
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] in names


def test_tool_choice_none_sends_no_tools(client: TestClient, ollama: OllamaDouble) -> None:
    client.post(
        CHAT,
        json={
            "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER],
            "tool_choice": "none",
        },
    )
    assert "tools" not in chat_bodies(ollama)[-1]


def test_format_reaches_ollama_and_the_answer_is_json(
    client: TestClient, ollama: OllamaDouble
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    body = client.post(
        CHAT, json={"messages": [{"role": "user", "content": "x"}], "format": schema}
    ).json()
    assert chat_bodies(ollama)[-1]["format"] == schema
    answer = json.loads(body["message"]["content"])
    assert isinstance(answer["name"], str) and isinstance(answer["age"], int)
    client.post("/api/v1/generate", json={"prompt": "x", "format": "json"})
    assert chat_bodies(ollama)[-1]["format"] == "json"


def test_images_on_a_model_without_vision_are_400_unsupported(
    client: TestClient, ollama: OllamaDouble
) -> None:
    messages = [{"role": "user", "content": "see", "images": [PNG]}]
    response = client.post(CHAT, json={"messages": messages})
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported"
    assert "images" in response.json()["detail"] and "llama3.2" in response.json()["detail"]
    assert not chat_bodies(ollama)


def test_tools_on_a_model_without_tools_are_400_unsupported(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    ollama.add_model("plain:1b", capabilities=("completion",))
    client = make_client()
    client.post("/api/v1/models/switch/plain:1b")
    response = client.post(
        CHAT, json={"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER]}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "unsupported"
    assert "tools" in response.json()["detail"]


def test_remote_image_urls_are_refused_unless_allowed(
    client: TestClient, ollama: OllamaDouble
) -> None:
    messages = [{"role": "user", "content": "see", "images": ["https://example.com/cat.png"]}]
    response = client.post(CHAT, json={"messages": messages})
    assert response.status_code == 400
    assert response.json()["code"] == "image_url_not_allowed"
    assert not chat_bodies(ollama)


def test_chat_logs_the_tool_calls_and_the_format_kind(
    make_client: Callable[..., TestClient], ollama: OllamaDouble, log_rows: Callable[[], list]
) -> None:
    client = make_client(LOG_PROMPTS=True)
    ollama.enqueue(
        Script(tokens=[], tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome"}}])
    )
    client.post(CHAT, json={"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER]})
    client.post(CHAT, json={"messages": [{"role": "user", "content": "y"}], "format": "json"})
    client.__exit__(None, None, None)
    first, second = wait_for_rows(log_rows, 2)
    assert (first.route, first.tool_calls, first.response_format) == (CHAT, "get_weather", None)
    assert json.loads(first.prompt) == {
        "messages": [{"role": "user", "content": "x"}],
        "tools": ["get_weather"],
    }
    assert (second.tool_calls, second.response_format) == (None, "json")


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "x"}], "model": "other"},
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"function": {"name": "f"}, "x": 1}],
        },
        {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
        {"messages": [{"role": "system", "content": "only a system message"}]},
        {"messages": [{"role": "user", "content": "x", "images": ["%%%"]}]},
    ],
)
def test_bad_chats_are_4xx_and_never_reach_ollama(
    client: TestClient, ollama: OllamaDouble, body: dict[str, Any]
) -> None:
    response = client.post(CHAT, json=body)
    assert response.status_code in (400, 422), response.text
    assert not chat_bodies(ollama)


def test_embed_returns_one_vector_per_input_from_the_active_model(
    client: TestClient, ollama: OllamaDouble, log_rows: Callable[[], list]
) -> None:
    body = client.post(EMBED, json={"input": ["a", "b"]}).json()
    assert body["model"] == "llama3.2"
    assert len(body["embeddings"]) == 2 and body["embeddings"][0] != body["embeddings"][1]
    assert body["usage"]["prompt_tokens"] > 0
    (record,) = ollama.embeddings
    assert record.inputs == ["a", "b"]
    single = client.post(EMBED, json={"input": "a"}).json()
    assert single["embeddings"] == body["embeddings"][:1]
    client.__exit__(None, None, None)
    rows = wait_for_rows(log_rows, 2)
    assert [(r.route, r.status, r.model) for r in rows] == [(EMBED, "ok", "llama3.2")] * 2
    assert rows[0].prompt_tokens == body["usage"]["prompt_tokens"]


def test_embed_uses_embedding_model_when_set(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    client = make_client(EMBEDDING_MODEL="qwen2.5:0.5b")
    assert client.post(EMBED, json={"input": "a"}).json()["model"] == "qwen2.5:0.5b"
    assert ollama.embeddings[-1].model == "qwen2.5:0.5b"


def test_a_large_image_fits_where_images_go_and_only_there(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    ollama.add_model("llava:7b", capabilities=("completion", "vision"))
    client = make_client(MAX_PROMPT_CHARS=1000, MAX_IMAGE_BYTES=3_000_000)
    client.post("/api/v1/models/switch/llava:7b")
    image = base64.b64encode(b"\x89PNG" + b"\x00" * 2_000_000).decode()
    body = {"messages": [{"role": "user", "content": "see", "images": [image]}]}
    assert client.post(CHAT, json=body).status_code == 200
    assert chat_bodies(ollama)[-1]["messages"][0]["images"] == [image]
    response = client.post("/api/v1/generate", json={"prompt": image})
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")
    small = make_client(MAX_PROMPT_CHARS=1000, MAX_IMAGE_BYTES=1_000_000)
    response = small.post(CHAT, json=body)
    assert (response.status_code, response.json()["code"]) == (413, "body_too_large")
