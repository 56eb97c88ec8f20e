"""The official ``openai`` SDK's Responses API against a real ``llmserve serve`` (Ollama is the
double): ``responses.create``, ``responses.stream``, a function-call round trip and structured
output, as the OpenAI Agents SDK and any app would use them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests._server import ServerProcess
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import raw_request, rows, status_of

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def _chats(ollama: OllamaDouble) -> list[dict[str, Any]]:
    return [r.json for r in ollama.requests if r.path == "/api/chat"]


def test_create_answers_with_output_text(
    client: openai.OpenAI, ollama: OllamaDouble, database_url: str
) -> None:
    ollama.enqueue(Script(tokens=["The ", "sky ", "is ", "blue."], prompt_eval_count=9))
    request_id = str(uuid.uuid4())
    response = client.responses.create(
        model="llama3.2",
        instructions="Answer briefly.",
        input="Why is the sky blue?",
        max_output_tokens=64,
        temperature=0.2,
        store=False,
        extra_headers={"X-Request-ID": request_id},
    )
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == "llama3.2"
    assert response.output_text == "The sky is blue."
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 4)
    assert response.usage.total_tokens == 13
    (sent,) = _chats(ollama)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert sent["options"] == {"temperature": 0.2, "num_predict": 64}
    (row,) = rows(database_url, 1, request_ids=[request_id])
    assert (row.route, row.model, row.status) == ("/v1/responses", "llama3.2", "ok")


def test_the_token_limit_makes_the_response_incomplete(
    client: openai.OpenAI, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c", "d"]))
    response = client.responses.create(model="llama3.2", input="x", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "ab"


def test_stream_accumulates_text(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["Hel", "lo", " there"], prompt_eval_count=6))
    with client.responses.stream(model="llama3.2", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "Hel",
        "lo",
        " there",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "Hello there"
    assert final.usage is not None and final.usage.output_tokens == 3


def test_the_raw_stream_names_each_event(server: ServerProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["a", "b"]))
    body = {"model": "llama3.2", "input": "x", "stream": True}
    response = httpx.post(server.base_url + "/v1/responses", json=body, timeout=10)
    blocks = [b for b in response.text.split("\n\n") if b.startswith("event: ")]
    for block in blocks:
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
    deltas = [json.loads(b.split("\ndata: ")[1]) for b in blocks if "output_text.delta" in b]
    first, _ = deltas
    assert first["output_index"] == 0 and first["content_index"] == 0
    assert first["item_id"].startswith("msg_") and first["delta"] == "a"


def test_a_function_call_round_trip(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=[], tool_calls=[PARIS]))
    first = client.responses.create(model="llama3.2", input="Weather in Paris?", tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id == ollama.generations[-1].tool_calls_sent[0]["id"]

    # The SDK's own output items go back as input, then the function's output.
    items: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"},
    ]
    ollama.enqueue(Script(tokens=["It is ", "18 C."]))
    final = client.responses.create(model="llama3.2", input=items, tools=[WEATHER])
    assert final.output_text == "It is 18 C."
    sent = _chats(ollama)[-1]["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": call.call_id, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent[2] == {
        "role": "tool",
        "content": "18 C and sunny",
        "tool_call_id": call.call_id,
        "tool_name": "get_weather",
    }

    # An earlier answer's message item goes back as it came, too.
    items += [item.model_dump(exclude_none=True) for item in final.output]
    items.append({"role": "user", "content": [{"type": "input_text", "text": "Thanks."}]})
    ollama.enqueue(Script(tokens=["You're welcome."]))
    assert client.responses.create(model="llama3.2", input=items).output_text == "You're welcome."
    assert _chats(ollama)[-1]["messages"][3:] == [
        {"role": "assistant", "content": "It is 18 C."},
        {"role": "user", "content": "Thanks."},
    ]


def test_stream_accumulates_a_function_call(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    calls = [PARIS, {"name": "get_weather", "arguments": {"city": "Oslo"}}]
    ollama.enqueue(Script(tokens=["Checking."], tool_calls=calls))
    with client.responses.stream(model="llama3.2", input="x", tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Checking."
    function_calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in function_calls] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    sent_ids = [c["id"] for c in ollama.generations[-1].tool_calls_sent]
    assert [c.call_id for c in function_calls] == sent_ids


class Person(BaseModel):
    name: str
    age: int


def test_text_format_json_schema_parses_into_the_model(
    client: openai.OpenAI, ollama: OllamaDouble
) -> None:
    parsed = client.responses.parse(
        model="llama3.2", input="Describe a person.", text_format=Person
    )
    assert isinstance(parsed.output_parsed, Person)
    assert _chats(ollama)[-1]["format"]["properties"].keys() == {"name", "age"}
    client.responses.create(model="llama3.2", input="x", text={"format": {"type": "json_object"}})
    assert _chats(ollama)[-1]["format"] == "json"


def test_errors_use_openais_envelope(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="llama3.2", input="x", previous_response_id="resp_1")
    assert refused.value.code == "unsupported" and "previous_response_id" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-5", input="x")
    ollama.enqueue(Script(status=500, error="model runner crashed"))
    with pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model="llama3.2", input="x")
    assert failed.value.status_code == 502

    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2))
    with client.responses.stream(model="llama3.2", input="x") as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.failed"
    assert kinds.count("response.output_text.delta") == 2


@pytest.mark.parametrize(
    ("body", "param_words"),
    [
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
            ["call_x", "call_id"],
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, ["input"]),
        ({"input": "x", "tools": [{"type": "web_search"}]}, ["web_search"]),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            ["input"],
        ),
        ({"input": "x", "max_output_tokens": 0}, ["max_output_tokens"]),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    server: ServerProcess, ollama: OllamaDouble, body: dict[str, Any], param_words: list[str]
) -> None:
    response = httpx.post(
        server.base_url + "/v1/responses", json={"model": "llama3.2", **body}, timeout=10
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    said = f"{error['param']} {error['message']}"
    for word in param_words:
        assert word in said
    assert not _chats(ollama)


def test_a_body_or_prompt_over_the_limit_is_a_413_in_openais_shape(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    head = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    answer = raw_request(server.base_url, head)
    assert status_of(answer) == 413
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "body_too_large"

    body = {"model": "llama3.2", "input": "x" * (3 * 1024 * 1024)}
    response = httpx.post(server.base_url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "prompt_too_large"
    assert not _chats(ollama)


def test_a_client_that_leaves_mid_stream_stops_the_generation_upstream(
    server: ServerProcess, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(200)], delay_s=0.02))
    body = {"model": "llama3.2", "input": "x", "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/responses", json=body, timeout=10) as r:
        for received, _line in enumerate(r.iter_lines(), start=1):
            if received == 20:
                break
    record = ollama.wait_for_cancel(timeout=2.0)
    assert record.cancelled and record.tokens_sent < 200
