"""The official ``anthropic`` SDK against a real ``llmserve serve`` (Ollama is the double): the
code is what anyone writes for Anthropic, with only ``base_url`` and ``api_key`` changed."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anthropic
import httpx
import pytest

from tests._server import ServerProcess
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import raw_request, rows, status_of

USER: Any = [{"role": "user", "content": "Why is the sky blue?"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}


def _client(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def _chats(ollama: OllamaDouble) -> list[dict[str, Any]]:
    return [r.json for r in ollama.requests if r.path == "/api/chat"]


def _events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each SSE event."""
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def test_create_answers_a_message(
    server: ServerProcess, ollama: OllamaDouble, database_url: str
) -> None:
    ollama.enqueue(Script(tokens=["The ", "sky ", "is ", "blue."], prompt_eval_count=9))
    request_id = str(uuid.uuid4())
    message = _client(server).messages.create(
        model="llama3.2",
        max_tokens=64,
        system="Answer briefly.",
        messages=USER,
        stop_sequences=["\n\n"],
        extra_body={"temperature": 0.2, "top_k": 5},
        metadata={"user_id": "u1"},
        extra_headers={"X-Request-ID": request_id, "anthropic-version": "2023-06-01"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "llama3.2"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "The sky is blue.")
    ]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 4)
    (sent,) = _chats(ollama)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert sent["options"] == {"temperature": 0.2, "top_k": 5, "stop": ["\n\n"], "num_predict": 64}
    (row,) = rows(database_url, 1, request_ids=[request_id])
    assert (row.route, row.model, row.status) == ("/v1/messages", "llama3.2", "ok")


def test_stream_yields_text_and_the_final_message(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Hel", "lo", " there"], prompt_eval_count=6))
    with _client(server).messages.stream(model="llama3.2", max_tokens=32, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["Hel", "lo", " there"]
    assert final.content[0].type == "text" and final.content[0].text == "Hello there"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 3)


def test_the_raw_stream_is_anthropics_event_sequence(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c", "d"], delay_s=0.4))  # quiet: pings go out
    body = {"model": "llama3.2", "max_tokens": 3, "messages": USER, "stream": True}
    response = httpx.post(server.base_url + "/v1/messages", json=body, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert 'event: ping\ndata: {"type":"ping"}\n\n' in response.text
    events = [(name, data) for name, data in _events(response.text) if name != "ping"]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["content"] == []
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "a"}
    assert events[6][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[6][1]["usage"] == {"input_tokens": 7, "output_tokens": 3}


def test_through_ollama_a_stop_sequence_reads_as_end_turn(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    # What Ollama sends when the answer reached "three": the text before it, done_reason "stop",
    # the same as for an end of turn; so which stop string matched, if any, is not known.
    client, stops = _client(server), ["nowhere", "three"]
    ollama.enqueue(Script(tokens=["One, ", "two, "]))
    message = client.messages.create(
        model="llama3.2", max_tokens=32, messages=USER, stop_sequences=stops
    )
    assert message.content[0].type == "text" and message.content[0].text == "One, two, "
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    ollama.enqueue(Script(tokens=["One, ", "two, "]))
    body = {"model": "llama3.2", "max_tokens": 32, "messages": USER, "stream": True}
    response = httpx.post(
        server.base_url + "/v1/messages", json=body | {"stop_sequences": stops}, timeout=10
    )
    (delta,) = [data for name, data in _events(response.text) if name == "message_delta"]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert [sent["options"]["stop"] for sent in _chats(ollama)] == [stops, stops]


def test_a_tool_use_round_trip_keeps_the_ids(server: ServerProcess, ollama: OllamaDouble) -> None:
    client = _client(server)
    ollama.enqueue(Script(tokens=[], tool_calls=[PARIS]))
    first = client.messages.create(model="llama3.2", max_tokens=64, messages=USER, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    ollama_id = ollama.generations[-1].tool_calls_sent[0]["id"]
    assert use.id == ollama_id  # the backend's id, unchanged

    messages: Any = [
        *USER,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"},
                {"type": "text", "text": "Summarise."},
            ],
        },
    ]
    ollama.enqueue(Script(tokens=["It is ", "18 C."]))
    final = client.messages.create(
        model="llama3.2", max_tokens=64, messages=messages, tools=[WEATHER]
    )
    assert final.content[0].type == "text" and final.content[0].text == "It is 18 C."
    sent = _chats(ollama)[-1]
    assert sent["messages"][1]["tool_calls"] == [
        {"id": use.id, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent["messages"][2] == {
        "role": "tool",
        "content": "18 C and sunny",
        "tool_call_id": use.id,
        "tool_name": "get_weather",
    }
    assert sent["messages"][3] == {"role": "user", "content": "Summarise."}
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


def test_a_streamed_tool_use_arrives_as_input_json_deltas(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    calls = [PARIS, {"name": "get_weather", "arguments": {"city": "Oslo"}}]
    ollama.enqueue(Script(tokens=["Checking."], tool_calls=calls))
    with _client(server).messages.stream(
        model="llama3.2", max_tokens=64, messages=USER, tools=[WEATHER]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [b.input for b in final.content if b.type == "tool_use"] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    sent_ids = [c["id"] for c in ollama.generations[-1].tool_calls_sent]
    assert [b.id for b in final.content if b.type == "tool_use"] == sent_ids
    assert final.stop_reason == "tool_use"


def test_tool_choice_any_forces_a_call(server: ServerProcess, ollama: OllamaDouble) -> None:
    message = _client(server).messages.create(
        model="llama3.2",
        max_tokens=64,
        messages=USER,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    assert message.content[-1].type == "tool_use"
    assert _chats(ollama)[-1]["format"]["properties"].keys() == {"city"}


def test_count_tokens_is_the_backends_prompt_evaluation(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["x"], prompt_eval_count=42))
    count = _client(server).messages.count_tokens(
        model="llama3.2", system="Be brief.", messages=USER, tools=[WEATHER]
    )
    assert count.input_tokens == 42
    (sent,) = _chats(ollama)
    assert sent["options"]["num_predict"] == 1 and sent["tools"]


def test_errors_raise_the_sdks_exceptions(server: ServerProcess, ollama: OllamaDouble) -> None:
    client = _client(server)
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.create(model="claude-opus-4", max_tokens=8, messages=USER)
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]

    ollama.enqueue(Script(status=500, error="model runner crashed"))
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="llama3.2", max_tokens=8, messages=USER)
    assert failed.value.status_code == 502
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]

    ollama.enqueue(Script(status=503, error="server busy, please try again"))
    with pytest.raises(anthropic.APIStatusError) as busy:
        client.messages.create(model="llama3.2", max_tokens=8, messages=USER)
    assert busy.value.status_code == 529
    assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]

    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2))
    stream = client.messages.stream(model="llama3.2", max_tokens=8, messages=USER)
    with pytest.raises(anthropic.APIStatusError) as broken, stream as events:
        list(events.text_stream)
    assert broken.value.body["error"]["type"] == "api_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": USER}, ["max_tokens", "Field required"]),
        (
            {"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            ["messages.0.content", "video"],
        ),
        (
            {
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_x"}],
                    }
                ],
            },
            ["messages.0.content.0.tool_use_id", "toolu_x"],
        ),
        ({"max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}, ["role"]),
        (
            {"max_tokens": 8, "messages": USER, "tools": [{"type": "bash_20250124", "name": "b"}]},
            ["tools.0"],
        ),
        ({"max_tokens": 0, "messages": USER}, ["max_tokens"]),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    server: ServerProcess, ollama: OllamaDouble, body: dict[str, Any], words: list[str]
) -> None:
    response = httpx.post(
        server.base_url + "/v1/messages", json={"model": "llama3.2", **body}, timeout=10
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    for word in words:
        assert word in error["error"]["message"]
    assert not _chats(ollama)  # nothing reached the backend


def test_a_body_or_prompt_over_the_limit_is_a_413_in_anthropics_shape(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    answer = raw_request(server.base_url, head)
    assert status_of(answer) == 413
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
    assert "exceeds" in body["error"]["message"]

    huge = "x" * (3 * 1024 * 1024)
    request = {
        "model": "llama3.2",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": huge}],
    }
    response = httpx.post(server.base_url + "/v1/messages", json=request, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert "MAX_PROMPT_CHARS" in response.json()["error"]["message"]
    assert not _chats(ollama)


def test_a_client_that_leaves_mid_stream_stops_the_generation_upstream(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(200)], delay_s=0.02))
    body = {"model": "llama3.2", "max_tokens": 500, "messages": USER, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/messages", json=body, timeout=10) as response:
        for received, _line in enumerate(response.iter_lines(), start=1):
            if received == 12:
                break
    record = ollama.wait_for_cancel(timeout=2.0)
    assert record.cancelled and record.tokens_sent < 200
