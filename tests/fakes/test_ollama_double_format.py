"""With ``format`` the double answers JSON text that satisfies it, as Ollama's grammar forces."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.fakes.double_testing import BUILT_IN, lines
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.fakes.ollama_schema import JSON_ANSWER, answer_value, split_tokens

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city"],
}
FORCE_ANY_TOOL = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER_PARAMETERS},
            "required": ["name", "arguments"],
        },
        {
            "type": "object",
            "properties": {"name": {"const": "get_time"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"],
        },
    ]
}
SCHEMAS: list[dict[str, Any]] = [
    WEATHER_PARAMETERS,
    FORCE_ANY_TOOL,
    {"oneOf": [{"type": "string", "minLength": 12}, {"type": "number"}]},
    {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 3,
                "uniqueItems": True,
            },
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "count": {"type": "integer", "minimum": 10, "multipleOf": 5},
            "ok": {"type": "boolean"},
            "nothing": {"type": "null"},
            "maybe": {"type": ["null", "string"], "maxLength": 3},
            "when": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email"},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
            "nested": {
                "type": "object",
                "properties": {"deep": {"type": "object", "properties": {"x": {"const": 3}}}},
                "required": ["deep", "extra"],
            },
        },
        "required": ["tags", "score", "count"],
        "additionalProperties": False,
    },
    {
        "$defs": {
            "Item": {"type": "object", "properties": {"sku": {"type": "string"}}},
            "Qty": {"type": "integer", "minimum": 2},
        },
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            "qty": {"$ref": "#/$defs/Qty"},
            "both": {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]},
        },
    },
    {"type": "array", "items": {"enum": [3, 4]}, "maxItems": 0},
    {"type": "integer", "maximum": -4},
]


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    request = {"model": BUILT_IN, "messages": [{"role": "user", "content": "go"}], **body}
    return client.post("/api/chat", json=request)


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_instances_validate_against_their_schema(schema: dict[str, Any]) -> None:
    value = answer_value(schema)
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
    assert answer_value(schema) == value  # deterministic


def test_instance_details() -> None:
    assert answer_value("json") == JSON_ANSWER
    assert answer_value({}) == JSON_ANSWER
    assert answer_value({"title": "Anything"}) == JSON_ANSWER
    assert answer_value(WEATHER_PARAMETERS) == {"city": "city", "unit": "celsius", "days": 1}
    forced = answer_value(FORCE_ANY_TOOL)
    assert list(forced) == ["name", "arguments"] and forced["name"] == "get_weather"
    assert split_tokens("abcdefghij") == ["ab", "cde", "fgh", "ij"]
    assert split_tokens("ab") == ["a", "b"]


def test_json_format_streams_a_json_object_in_a_few_chunks(
    client: httpx.Client, double: OllamaDouble
) -> None:
    *chunks, final = lines(chat(client, format="json"))
    assert len(chunks) > 1
    text = "".join(chunk["message"]["content"] for chunk in chunks)
    assert json.loads(text) == JSON_ANSWER
    assert final["done_reason"] == "stop" and final["eval_count"] == len(chunks)


def test_a_forcing_schema_gets_a_matching_tool_call_object(
    client: httpx.Client, double: OllamaDouble
) -> None:
    body = chat(client, format=FORCE_ANY_TOOL, stream=False).json()
    value = json.loads(body["message"]["content"])
    jsonschema.validate(value, FORCE_ANY_TOOL)
    assert value == {
        "name": "get_weather",
        "arguments": {"city": "city", "unit": "celsius", "days": 1},
    }
    assert double.generations[-1].format == FORCE_ANY_TOOL
    generated = client.post(
        "/api/generate",
        json={"model": BUILT_IN, "prompt": "x", "format": WEATHER_PARAMETERS, "stream": False},
    ).json()
    jsonschema.validate(json.loads(generated["response"]), WEATHER_PARAMETERS)


def test_explicit_tokens_and_json_answer_decide(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(
        Script(tokens=['{"mine": ', "1}"]),
        Script(json_answer=False),
        Script(tokens=["ignored"], json_answer=True),
        Script(json_answer=True),
    )
    assert chat(client, format="json", stream=False).json()["message"]["content"] == '{"mine": 1}'
    assert (
        chat(client, format=WEATHER_PARAMETERS, stream=False).json()["message"]["content"]
        == "Hello, world!"
    )
    forced = chat(client, format=WEATHER_PARAMETERS, stream=False).json()["message"]["content"]
    assert json.loads(forced)["city"] == "city"
    assert json.loads(chat(client, stream=False).json()["message"]["content"]) == JSON_ANSWER
    # Without format the default answer is plain text.
    assert chat(client, stream=False).json()["message"]["content"] == "Hello, world!"


def test_format_with_scripted_tool_calls(client: httpx.Client, double: OllamaDouble) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    double.enqueue(Script(tool_calls=[{"name": "f", "arguments": {}}]))
    message = chat(client, format="json", tools=tools, stream=False).json()["message"]
    assert message["content"] == "" and message["tool_calls"][0]["function"]["name"] == "f"
