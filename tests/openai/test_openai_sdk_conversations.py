"""The official ``openai`` SDK against a real ``llmserve serve`` process: conversations, tools,
structured output, images and embeddings, as an app would use them (Ollama is the double)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.integration.test_chat_api import TIME, WEATHER
from tests.openai._helpers import log_rows, sent_to_ollama


@pytest.fixture
def server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        yield server


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_a_multi_turn_chat_reaches_ollama_turn_by_turn(
    client: openai.OpenAI, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Blue", "."]))
    messages: Any = [
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "And at night?"}]},
    ]
    chat = client.chat.completions.create(model="llama3.2", messages=messages)
    assert chat.choices[0].message.content == "Blue."
    assert sent_to_ollama(ollama)[-1]["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And at night?"},
    ]


def test_a_tool_round_trip(client: openai.OpenAI, ollama: OllamaDouble, db_url: str) -> None:
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    ollama.enqueue(
        Script(tokens=[], tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    )
    first = client.chat.completions.create(model="llama3.2", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    ollama.enqueue(Script(tokens=["It is ", "18 C."]))
    final = client.chat.completions.create(model="llama3.2", messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "It is 18 C."
    assert final.choices[0].finish_reason == "stop"
    sent = sent_to_ollama(ollama)[-1]["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": call.id, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent[2] == {
        "role": "tool",
        "content": "18 C and sunny",
        "tool_call_id": call.id,
        "tool_name": "get_weather",
    }
    rows = log_rows(db_url, 2)
    assert [r.tool_calls for r in rows[-2:]] == ["get_weather", None]


def test_two_parallel_calls_in_one_stream(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {"zone": "CET"}},
    ]
    ollama.enqueue(Script(tokens=[], tool_calls=calls, tool_chunks="together"))
    chunks = list(
        client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "x"}],
            tools=[WEATHER, TIME],
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    heads = [d for d in deltas if d.id is not None]
    assert [(d.index, d.type, d.function and d.function.name) for d in heads] == [
        (0, "function", "get_weather"),
        (1, "function", "get_time"),
    ]
    for index, call in enumerate(calls):
        text = "".join(
            d.function.arguments or "" for d in deltas if d.index == index and d.function
        )
        assert json.loads(text) == call["arguments"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    # The SDK's own accumulator reads the same stream into whole calls.
    ollama.enqueue(Script(tokens=["Checking."], tool_calls=calls))
    with client.chat.completions.stream(
        model="llama3.2", messages=[{"role": "user", "content": "x"}], tools=[WEATHER, TIME]
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Checking."
    assert [
        (t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls or []
    ] == [(c["name"], c["arguments"]) for c in calls]


def test_a_forced_tool_choice_is_a_call(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    chat = client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "Oslo"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert chat.choices[0].finish_reason == "tool_calls"
    (call,) = chat.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


class Person(BaseModel):
    name: str
    age: int
    languages: list[str]


def test_a_json_schema_answer_parses_into_the_model(
    client: openai.OpenAI, ollama: OllamaDouble
) -> None:
    completion = client.chat.completions.parse(
        model="llama3.2",
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format=Person,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    sent = sent_to_ollama(ollama)[-1]
    assert sent["format"]["properties"].keys() == {"name", "age", "languages"}
    client.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_object"},
    )
    assert sent_to_ollama(ollama)[-1]["format"] == "json"


def test_an_image_data_url_reaches_ollama_as_base64(
    client: openai.OpenAI, ollama: OllamaDouble
) -> None:
    ollama.add_model("llava:7b", capabilities=("completion", "vision"))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    client.chat.completions.create(
        model="llava:7b", messages=[{"role": "user", "content": content}]
    )
    assert sent_to_ollama(ollama)[-1]["messages"] == [
        {"role": "user", "content": "What is this?", "images": [png]}
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": content}]
        )
    assert refused.value.code == "unsupported"
    remote: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="llava:7b", messages=[{"role": "user", "content": remote}]
        )
    assert refused.value.code == "image_url_not_allowed"


def test_embeddings_for_a_list_of_inputs(client: openai.OpenAI, ollama: OllamaDouble) -> None:
    result = client.embeddings.create(model="llama3.2", input=["first", "second", "third"])
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert len({tuple(v) for v in vectors}) == 3
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in vectors)  # Ollama normalises
    assert result.usage.prompt_tokens > 0 and result.model == "llama3.2"
    assert ollama.embeddings[-1].inputs == ["first", "second", "third"]

    # The SDK asks for base64 by default when numpy is absent; both decode to the same floats.
    raw = client.embeddings.with_raw_response.create(
        model="llama3.2", input="first", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    data = base64.b64decode(encoded)
    floats = struct.unpack(f"<{len(data) // 4}f", data)
    assert floats == pytest.approx(vectors[0], rel=1e-6)

    short = client.embeddings.create(model="llama3.2", input="first", dimensions=4)
    assert len(short.data[0].embedding) == 4 and ollama.embeddings[-1].dimensions == 4

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope:1b", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="llama3.2", input=[[1, 2, 3]])  # type: ignore[list-item]
    assert bad.value.param == "input"
