"""``/api/chat`` requests are decoded, checked and recorded the way Ollama does it."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.fakes.double_testing import BUILT_IN, JSON_UTF8, lines
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.fakes.ollama_messages import base64_error_offset

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
USER = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/api/chat", json={"model": BUILT_IN, "messages": USER, **body})


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


# -- messages --------------------------------------------------------------------------------


def test_content_parts_array_is_a_json_binding_error(
    client: httpx.Client, double: OllamaDouble
) -> None:
    parts = [{"type": "text", "text": "hi"}]
    response = chat(client, messages=[{"role": "user", "content": parts}])
    assert error(response) == (
        400,
        "json: cannot unmarshal array into Go struct field ChatRequest.messages.content "
        "of type string",
    )
    assert double.generations == []


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": 1}, "number into Go struct field ChatRequest.messages.role of type string"),
        ({"images": "abc="}, "string into Go struct field ChatRequest.messages.images of type "),
        ({"images": [1]}, "number into Go struct field ChatRequest.messages.images of type "),
        ({"tool_calls": {}}, "object into Go struct field ChatRequest.messages.tool_calls of "),
        (
            {"tool_calls": [{"function": {"index": 1.5}}]},
            "number 1.5 into Go struct field ChatRequest.messages.tool_calls.function.index of",
        ),
        ({"tool_name": False}, "bool into Go struct field ChatRequest.messages.tool_name of "),
    ],
)
def test_message_field_types(client: httpx.Client, message: dict[str, Any], expected: str) -> None:
    status, text = error(chat(client, messages=[{"role": "user", "content": "x", **message}]))
    assert status == 400 and text.startswith("json: cannot unmarshal " + expected), text


@pytest.mark.parametrize(
    ("image", "offset"),
    [
        ("data:image/png;base64," + PNG, 4),  # ':' is the first byte outside the alphabet
        (PNG.rstrip("="), len(PNG) // 4 * 4 - 4),  # padding is required
        ("a===", 1),
        ("aGk=aGk=", 4),  # nothing may follow the padding
        ("ab-_", 2),  # URL-safe base64 is not standard base64
        ("aGk", 0),
    ],
)
def test_images_must_be_standard_base64(client: httpx.Client, image: str, offset: int) -> None:
    assert base64_error_offset(image) == offset
    message = {"role": "user", "content": "what is this?", "images": [PNG, image]}
    response = chat(client, messages=[message])
    assert error(response) == (400, f"illegal base64 data at input byte {offset}")


def test_valid_base64_variants() -> None:
    for text in ("", "aGk=", "aGVsbG8=", "aGVs\nbG8=", "aGk=\r\n", PNG):
        assert base64_error_offset(text) is None, text
    assert base64_error_offset("aGk=\n=") == 5


def test_images_go_to_a_text_model_and_are_recorded(
    client: httpx.Client, double: OllamaDouble
) -> None:
    messages = [
        {"role": "user", "content": "look", "images": [PNG]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "and this?", "images": [PNG, "aGk="]},
    ]
    response = chat(client, messages=messages, stream=False)
    assert response.status_code == 200
    record = double.generations[-1]
    assert record.images == [PNG, PNG, "aGk="]
    assert record.messages == messages
    assert "vision" not in client.post("/api/show", json={"model": BUILT_IN}).json()["capabilities"]


def test_roles_are_lower_cased_and_keys_matched_ignoring_case(
    client: httpx.Client, double: OllamaDouble
) -> None:
    sent = [{"ROLE": "System", "Content": "be brief"}, {"role": "USER", "content": "hello"}]
    assert chat(client, messages=sent, stream=False).status_code == 200
    record = double.generations[-1]
    assert record.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert record.prompt == "hello"
    assert record.body["messages"] == sent  # the body as received is untouched


def test_tool_conversation_round_trip_is_accepted(
    client: httpx.Client, double: OllamaDouble
) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_abcd1234",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_abcd1234"},
    ]
    response = chat(client, messages=messages, tools=[WEATHER_TOOL], stream=False)
    assert response.status_code == 200
    assert double.generations[-1].messages == messages


@pytest.mark.parametrize("arguments", ['{"city": "Paris"}', ["Paris"], 3, True])
def test_tool_call_arguments_must_be_an_object(client: httpx.Client, arguments: Any) -> None:
    call = {"function": {"name": "get_weather", "arguments": arguments}}
    message = {"role": "assistant", "content": "", "tool_calls": [call]}
    status, text = error(chat(client, messages=[*USER, message]))
    assert status == 400
    assert text == "Value looks like object, but can't find closing '}' symbol"


def test_null_or_missing_arguments_are_accepted(client: httpx.Client) -> None:
    for function in ({"name": "f", "arguments": None}, {"name": "f"}):
        message = {"role": "assistant", "content": "", "tool_calls": [{"function": function}]}
        assert chat(client, messages=[*USER, message], stream=False).status_code == 200


# -- tools ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ("get_weather", "string into Go struct field ChatRequest.tools of type api.Tools"),
        (["get_weather"], "string into Go struct field ChatRequest.tools of type api.Tool"),
        ([{"type": 1}], "number into Go struct field Tool.tools.type of type string"),
        (
            [{"function": "f"}],
            "string into Go struct field Tool.tools.function of type api.ToolFunction",
        ),
        (
            [{"function": {"name": 5}}],
            "number into Go struct field ToolFunction.tools.function.name of type string",
        ),
        (
            [{"function": {"parameters": {"required": "city"}}}],
            "string into Go struct field "
            "ToolFunctionParameters.tools.function.parameters.required of type []string",
        ),
    ],
)
def test_tools_are_decoded_as_api_tools(client: httpx.Client, tools: Any, expected: str) -> None:
    assert error(chat(client, tools=tools)) == (400, "json: cannot unmarshal " + expected)


def test_tools_to_a_model_without_the_capability_is_refused_by_full_name(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.add_model("Gemma3:1b", capabilities=("completion", "vision"))
    refused = client.post(
        "/api/chat", json={"model": "gemma3:1B", "messages": USER, "tools": [WEATHER_TOOL]}
    )
    assert error(refused) == (400, "registry.ollama.ai/library/Gemma3:1b does not support tools")
    assert refused.headers["content-type"] == JSON_UTF8
    other = client.post(
        "/api/chat", json={"model": "myns/plain:v2", "messages": USER, "tools": [WEATHER_TOOL]}
    )
    assert other.status_code == 404  # not installed comes first
    double.add_model("myns/plain:v2", capabilities=("completion",))
    named = client.post(
        "/api/chat", json={"model": "myns/plain:v2", "messages": USER, "tools": [WEATHER_TOOL]}
    )
    assert error(named) == (400, "registry.ollama.ai/myns/plain:v2 does not support tools")
    # An empty tools list asks for nothing; images need no "vision" either.
    assert chat(client, model="gemma3:1b", tools=[]).status_code == 200
    assert double.pending_scripts == 0 and len(double.generations) == 1


def test_a_model_without_completion_cannot_chat_or_generate(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.add_model("nomic-embed-text", capabilities=("embedding",))
    assert error(chat(client, model="nomic-embed-text")) == (
        400,
        '"nomic-embed-text" does not support chat',
    )
    assert error(
        client.post("/api/generate", json={"model": "nomic-embed-text", "prompt": "x"})
    ) == (400, '"nomic-embed-text" does not support generate')
    assert double.generations == []


def test_generate_checks_insert_and_images_too(client: httpx.Client, double: OllamaDouble) -> None:
    body = {"model": BUILT_IN, "prompt": "def f(", "suffix": "return 1"}
    assert error(client.post("/api/generate", json=body)) == (
        400,
        "registry.ollama.ai/library/llama3.2:latest does not support insert",
    )
    bad = client.post("/api/generate", json={"model": BUILT_IN, "prompt": "x", "images": ["a,b"]})
    assert error(bad) == (400, "illegal base64 data at input byte 1")
    good = {"model": BUILT_IN, "prompt": "x", "images": [PNG], "stream": False}
    assert client.post("/api/generate", json=good).status_code == 200
    assert double.generations[-1].images == [PNG]


def test_show_lists_the_capabilities(client: httpx.Client, double: OllamaDouble) -> None:
    double.add_model("llava", capabilities=("completion", "vision"), embedding_dim=8)
    body = client.post("/api/show", json={"model": "llava"}).json()
    assert body["capabilities"] == ["completion", "vision"]
    assert body["model_info"]["llava.embedding_length"] == 8
    default = client.post("/api/show", json={"model": BUILT_IN}).json()
    assert default["capabilities"] == ["completion", "tools"]


# -- format, options, keep_alive, think -------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "quoted"),
    [("xml", r'"\"xml\""'), (5, '"5"'), (["a"], r'"[\"a\"]"'), (True, '"true"')],
)
def test_invalid_format_is_a_500_before_any_output(
    client: httpx.Client, double: OllamaDouble, fmt: Any, quoted: str
) -> None:
    message = f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    streamed = chat(client, format=fmt)
    assert error(streamed) == (500, message)
    assert streamed.headers["content-type"] == "application/json"
    whole = chat(client, format=fmt, stream=False)
    assert error(whole) == (500, message)
    assert whole.headers["content-type"] == JSON_UTF8
    assert double.generations == [] and double.pending_scripts == 0
    # The runner rejects it, so the model did load; an empty conversation only loads.
    assert double.loaded == ["llama3.2:latest"]
    load = client.post("/api/chat", json={"model": BUILT_IN, "messages": [], "format": fmt})
    assert load.json()["done_reason"] == "load"


def test_valid_formats_and_empty_format(client: httpx.Client, double: OllamaDouble) -> None:
    for fmt in ("json", {"type": "object"}, {}, "", None):
        assert chat(client, format=fmt, stream=False).status_code == 200, fmt


def test_options_are_type_checked_and_recorded(client: httpx.Client, double: OllamaDouble) -> None:
    options = {
        "num_ctx": 8192,
        "temperature": 0.2,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 7,
        "stop": ["\n\n"],
        "unknown_option": "ignored",
    }
    assert chat(client, options=options, stream=False).status_code == 200
    record = double.generations[-1]
    assert record.options == options and record.body["options"] == options
    for key, value, kind in [
        ("num_ctx", "big", "integer"),
        ("repeat_penalty", "high", "float32"),
        ("presence_penalty", [1], "float32"),
        ("frequency_penalty", True, "float32"),
    ]:
        response = chat(client, options={key: value})
        assert error(response) == (500, f'option "{key}" must be of type {kind}')


def test_keep_alive_and_think_are_checked_at_binding(
    client: httpx.Client, double: OllamaDouble
) -> None:
    assert error(chat(client, keep_alive="10")) == (
        400,
        'time: missing unit in duration "10"',
    )
    assert error(chat(client, keep_alive=[1])) == (400, "Unsupported type: 'array'")
    assert chat(client, keep_alive="1h30m", stream=False).status_code == 200
    assert double.generations[-1].body["keep_alive"] == "1h30m"
    assert chat(client, keep_alive=-1, stream=False).status_code == 200
    assert error(chat(client, think=True)) == (400, '"llama3.2" does not support thinking')
    assert chat(client, think=False, stream=False).status_code == 200
    assert chat(client, think="maybe").status_code == 400
    assert error(chat(client, top_logprobs=21)) == (400, "top_logprobs must be between 0 and 20")
    double.add_model("qwen3", capabilities=("completion", "tools", "thinking"))
    double.enqueue(Script(thinking=["let me see"], tokens=["yes"]))
    body = chat(client, model="qwen3", think="high", stream=False).json()
    assert body["message"] == {"role": "assistant", "content": "yes", "thinking": "let me see"}


# -- recording --------------------------------------------------------------------------------


def test_the_received_body_is_recorded_untouched(
    client: httpx.Client, double: OllamaDouble
) -> None:
    body = {
        "model": BUILT_IN,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "images": [PNG]},
        ],
        "tools": [WEATHER_TOOL],
        "format": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "options": {"num_ctx": 4096, "repeat_penalty": 1.2},
        "keep_alive": "5m",
        "stream": False,
        "think": False,
        "x_unknown": {"kept": True},
        "truncate": None,
    }
    raw = json.dumps(body).encode()
    response = client.post("/api/chat", content=raw)
    assert response.status_code == 200
    record = double.generations[-1]
    assert (record.path, record.kind, record.body) == ("/api/chat", "chat", body)
    assert list(record.body) == list(body)  # key order as sent
    assert record.tools == [WEATHER_TOOL] and record.format == body["format"]
    assert "x_unknown" not in record.request and "truncate" not in record.request
    assert double.requests[-1].body == raw
    generated = client.post("/api/generate", json={"model": BUILT_IN, "prompt": "x", "n": 1})
    assert generated.status_code == 200
    assert (double.generations[-1].path, double.generations[-1].body["n"]) == ("/api/generate", 1)


def test_stream_chunks_of_a_plain_chat_keep_their_shape(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tokens=["a", "b"]))
    *chunks, final = lines(chat(client, tools=[WEATHER_TOOL]))
    assert [c["message"] for c in chunks] == [
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] == "stop"
