"""The native request schemas (generate, chat, embed) are strict: unknown fields and values
out of range are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmserve.api.schemas import ChatRequest, EmbedRequest, GenerateRequest
from llmserve.domain import Message, ResponseFormat, Tool, ToolCall, ToolChoice


def test_minimal_request_and_defaults() -> None:
    request = GenerateRequest.model_validate({"prompt": "hi"})
    assert request.stream is False
    domain = request.to_domain()
    assert domain.messages == (Message("user", "hi"),)
    assert domain.single_prompt == ("hi", None)
    assert domain.options.stop == ()
    assert domain.response_format is None


def test_options_map_to_the_domain() -> None:
    request = GenerateRequest.model_validate(
        {
            "prompt": "hi",
            "system": "be brief",
            "options": {
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "seed": 7,
                "stop": "END",
                "max_tokens": 5,
            },
        }
    )
    options = request.to_domain().options
    assert (options.temperature, options.top_p, options.top_k) == (0.2, 0.9, 40)
    assert (options.seed, options.stop, options.max_tokens) == (7, ("END",), 5)
    assert request.to_domain().messages == (Message("system", "be brief"), Message("user", "hi"))


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "   \n\t"},
        {"prompt": 5},
        {"prompt": None},
        {"prompt": "hi", "stream": "yes"},
        {"prompt": "hi", "stream": 1},
        {"prompt": "hi", "steam": True},
        {"prompt": "hi", "model": "other"},
        {"prompt": "hi", "options": {"temperature": 2.5}},
        {"prompt": "hi", "options": {"temperature": -0.1}},
        {"prompt": "hi", "options": {"top_p": 0}},
        {"prompt": "hi", "options": {"top_p": 1.5}},
        {"prompt": "hi", "options": {"top_k": -1}},
        {"prompt": "hi", "options": {"seed": 1.5}},
        {"prompt": "hi", "options": {"max_tokens": 0}},
        {"prompt": "hi", "options": {"stop": ["a"] * 9}},
        {"prompt": "hi", "options": {"num_ctx": 0}},
        {"prompt": "hi", "options": {"keep_alive": "300"}},
        {"prompt": "hi", "options": {"presence_penalty": 3}},
        {"prompt": "hi", "options": {"mirostat": 1}},
        {"prompt": "hi", "format": "yaml"},
        {"prompt": "hi", "format": {"type": "no-such-type"}},
    ],
)
def test_invalid_bodies_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(body)


def test_new_options_and_format_map_to_the_domain() -> None:
    options = {
        "num_ctx": 8192,
        "repeat_penalty": 1.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "keep_alive": "5m",
    }
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    domain = GenerateRequest.model_validate(
        {"prompt": "hi", "options": options, "format": schema}
    ).to_domain()
    got = domain.options
    assert (got.num_ctx, got.repeat_penalty, got.keep_alive) == (8192, 1.2, "5m")
    assert (got.presence_penalty, got.frequency_penalty) == (0.5, -0.5)
    assert domain.response_format == ResponseFormat("json_schema", schema=schema)
    json_only = GenerateRequest.model_validate({"prompt": "hi", "format": "json"}).to_domain()
    assert json_only.response_format == ResponseFormat("json")


def test_a_chat_becomes_the_conversation_unflattened() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?", "images": ["aGk="]},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "18 C", "tool_call_id": "c1"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }
    domain = ChatRequest.model_validate(body).to_domain(max_image_bytes=1000)
    assert domain.messages == (
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?", images=("aGk=",)),
        Message("assistant", "", tool_calls=(ToolCall("c1", "weather", {"city": "Paris"}),)),
        Message("tool", "18 C", tool_call_id="c1"),
    )
    assert domain.tools == (Tool("weather", None, {}),)
    assert domain.tool_choice == ToolChoice("function", "weather")


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "user", "content": "hi"}], "steam": True},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                }
            ]
        },
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"function": {}}]},
        {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "sometimes"},
    ],
)
def test_invalid_chat_bodies_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ChatRequest.model_validate(body)


def test_a_chat_image_must_be_base64() -> None:
    body = {"messages": [{"role": "user", "content": "see", "images": ["not base64!"]}]}
    request = ChatRequest.model_validate(body)
    with pytest.raises(Exception, match="base64"):
        request.to_domain(max_image_bytes=1000)


@pytest.mark.parametrize("body", [{"input": ""}, {"input": []}, {"input": [1]}, {"x": "a"}])
def test_invalid_embed_bodies_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EmbedRequest.model_validate(body)
