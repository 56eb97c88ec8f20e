"""Both new faces on the embedded engine, end to end: real uvicorn, llama.cpp in-process, the
real 270M model, the official ``anthropic`` and ``openai`` SDKs. Answers are short and greedy."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from tests._server import ServerProcess, running_server

pytestmark = pytest.mark.embedded

MODEL = "gemma-3-270m-q4_k_m"
USER: Any = [{"role": "user", "content": "Name a colour."}]
GREEDY = {"temperature": 0}
ANSWER = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "bright": {"type": "boolean"},
    },
    "required": ["colour", "bright"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("embedded-faces")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env = {
        **keep,
        "LLM_BACKEND": "embedded",
        "DATABASE_URL": f"sqlite:///{home / 'llmserve.db'}",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    with running_server(env, home) as server:
        yield server


@pytest.fixture(scope="module")
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def test_messages_create_and_stream_real_text(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY, timeout=120
    )
    block = message.content[0]
    assert block.type == "text" and any(c.isalpha() for c in block.text)
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8

    with claude.messages.stream(
        model=MODEL, max_tokens=8, messages=USER, extra_body=GREEDY, timeout=120
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == block.text  # greedy: the same answer
    assert final.content[0].type == "text" and final.content[0].text == block.text
    assert final.usage.output_tokens == message.usage.output_tokens


def test_messages_say_which_stop_sequence_ended_the_answer(claude: anthropic.Anthropic) -> None:
    # Greedy, this prompt makes the 270M model write "The model is a 10-bit integer.\n..." and,
    # further on, "$value = 1;": the earliest match ends it, whatever the order of the list.
    count: Any = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    asked: Any = {"model": MODEL, "max_tokens": 40, "messages": count, "extra_body": GREEDY}
    free = claude.messages.create(**asked, timeout=120)
    assert free.content[0].type == "text" and "integer" in free.content[0].text
    assert (free.stop_reason, free.stop_sequence) == ("max_tokens", None)

    stops = ["$value", "integer"]
    message = claude.messages.create(**asked, stop_sequences=stops, timeout=120)
    block = message.content[0]
    assert block.type == "text" and free.content[0].text.startswith(block.text + "integer")
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "integer")

    with claude.messages.stream(**asked, stop_sequences=stops, timeout=120) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == block.text
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "integer")


def test_messages_json_schema_output_follows_the_schema(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=USER,
        output_config={"format": {"type": "json_schema", "schema": ANSWER}},
        extra_body=GREEDY,
        timeout=120,
    )
    block = message.content[0]
    assert block.type == "text"
    jsonschema.validate(json.loads(block.text), ANSWER)


def test_count_tokens_uses_the_models_tokenizer(claude: anthropic.Anthropic) -> None:
    short = claude.messages.count_tokens(model=MODEL, messages=USER)
    longer = claude.messages.count_tokens(model=MODEL, system="You are a painter.", messages=USER)
    assert 0 < short.input_tokens < longer.input_tokens


def test_tools_are_refused_in_each_apis_shape(
    claude: anthropic.Anthropic, oai: openai.OpenAI
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=MODEL, max_tokens=8, messages=USER, tools=[WEATHER])
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "tool" in refused.value.body["error"]["message"]  # type: ignore[index]
    tool: Any = {"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}
    with pytest.raises(openai.BadRequestError) as unsupported:
        oai.responses.create(model=MODEL, input="x", tools=[tool])
    assert unsupported.value.code == "unsupported"


def test_responses_create_and_stream_real_text(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=MODEL, input="Name a colour.", max_output_tokens=8, temperature=0, timeout=120
    )
    assert any(c.isalpha() for c in response.output_text)
    assert response.usage is not None and response.usage.input_tokens > 0
    with oai.responses.stream(
        model=MODEL, input="Name a colour.", max_output_tokens=8, temperature=0, timeout=120
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == response.output_text


def test_responses_json_schema_follows_the_schema(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=MODEL,
        input="Name a colour.",
        max_output_tokens=40,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER}},
        timeout=120,
    )
    jsonschema.validate(json.loads(response.output_text), ANSWER)
