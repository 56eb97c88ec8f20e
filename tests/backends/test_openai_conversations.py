"""The OpenAI-compatible backend speaks conversations in OpenAI's own form, and reads tool calls
streamed the way vLLM streams them (arguments in fragments).

The server is a fake transport injected into the backend's httpx client: it records each
request and answers with a scripted SSE body, byte for byte what such a server sends.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from llmserve import errors
from llmserve.backends.openai import OpenAIBackend
from llmserve.domain import (
    GenerationOptions,
    GenerationRequest,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
WEATHER = Tool(
    "get_weather",
    "Current weather",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class _Server:
    """Records request bodies; answers chat with ``sse`` and embeddings with vectors."""

    def __init__(self, sse: bytes = b"") -> None:
        self.sse = sse
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if request.url.path.endswith("/embeddings"):
            data = [
                {"object": "embedding", "index": i, "embedding": [float(i), 0.5]}
                for i in reversed(range(len(body["input"])))
            ]
            usage = {"prompt_tokens": 6, "total_tokens": 6}
            return httpx.Response(200, json={"object": "list", "data": data, "usage": usage})
        return httpx.Response(200, content=self.sse, headers={"content-type": "text/event-stream"})


def _backend(server: _Server) -> OpenAIBackend:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return OpenAIBackend("http://vllm:8000", None, client, built_in_model="m")


@pytest.mark.anyio
async def test_the_conversation_tools_and_format_are_sent_as_openai_has_them() -> None:
    server = _Server(_sse(_chunk({"content": "ok"}), _chunk({}, "stop")))
    request = GenerationRequest(
        messages=(
            Message("system", "Be brief."),
            Message("user", "What is this?", images=(PNG,)),
            Message("assistant", "", tool_calls=(ToolCall("c1", "get_weather", {"city": "Oslo"}),)),
            Message("tool", "12 C", tool_call_id="c1"),
        ),
        options=GenerationOptions(presence_penalty=0.5, frequency_penalty=0.1, max_tokens=9),
        tools=(WEATHER,),
        tool_choice=ToolChoice("function", "get_weather"),
        parallel_tool_calls=False,
        response_format=ResponseFormat("json_schema", {"type": "object"}, "answer", True),
    )
    stream = await _backend(server).open_generation("m", request)
    assert [event async for event in stream] == ["ok"]
    (sent,) = server.bodies
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": "12 C", "tool_call_id": "c1"},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    assert (sent["presence_penalty"], sent["frequency_penalty"], sent["max_tokens"]) == (
        0.5,
        0.1,
        9,
    )


@pytest.mark.anyio
async def test_fragmented_tool_calls_become_deltas_and_whole_calls() -> None:
    server = _Server(
        _sse(
            _chunk({"role": "assistant", "content": None}),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Rome"}'}}]}),
            _chunk(
                {"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "get_weather"}}]}
            ),
            _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Bern"}'}}]}),
            _chunk({}, "tool_calls"),
        )
    )
    request = GenerationRequest((Message("user", "x"),), tools=(WEATHER,))
    stream = await _backend(server).open_generation("m", request)
    events = [event async for event in stream]
    assert events[0] == ToolCallDelta(0, "call_a", "get_weather", "")
    assert "".join(
        e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == 0
    ) == ('{"city": "Rome"}')
    assert stream.result is not None
    assert stream.result.done_reason == "tool_calls"
    assert stream.result.tool_calls == [
        ToolCall("call_a", "get_weather", {"city": "Rome"}),
        ToolCall("call_b", "get_weather", {"city": "Bern"}),
    ]
    assert server.bodies[0]["tool_choice"] == "auto"


def _vllm_end(finish: str, stop_reason: object) -> dict[str, Any]:
    """vLLM's last chunk: ``stop_reason`` is the stop string or stop token id that ended it."""
    chunk = _chunk({}, finish)
    chunk["choices"][0]["stop_reason"] = stop_reason
    return chunk


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("finish", "stop_reason", "expected"),
    [
        ("stop", "END", "END"),  # a requested stop string matched
        ("stop", None, None),  # end of sequence
        ("stop", 106, None),  # a stop token's id, not a string
        ("stop", "###", None),  # not one of the request's stop strings
        ("length", None, None),
    ],
)
async def test_the_matched_stop_string_is_read_from_vllms_stop_reason(
    finish: str, stop_reason: object, expected: str | None
) -> None:
    server = _Server(_sse(_chunk({"content": "one, two"}), _vllm_end(finish, stop_reason)))
    options = GenerationOptions(stop=("never", "END"))
    stream = await _backend(server).open_generation(
        "m", GenerationRequest.from_prompt("x", options=options)
    )
    assert [event async for event in stream] == ["one, two"]
    assert server.bodies[0]["stop"] == ["never", "END"]
    assert stream.result is not None
    assert (stream.result.done_reason, stream.result.stop_sequence) == (finish, expected)


@pytest.mark.anyio
async def test_ollama_only_options_are_refused_before_anything_is_sent() -> None:
    server = _Server()
    for options in (GenerationOptions(num_ctx=8192), GenerationOptions(keep_alive="5m")):
        request = GenerationRequest.from_prompt("x", options=options)
        with pytest.raises(errors.UnsupportedError):
            await _backend(server).open_generation("m", request)
    assert server.bodies == []


@pytest.mark.anyio
async def test_embeddings_come_back_in_input_order() -> None:
    server = _Server()
    result = await _backend(server).embed("m", ["a", "b", "c"], dimensions=2)
    assert result.vectors == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]]
    assert result.prompt_tokens == 6
    assert server.bodies == [
        {"model": "m", "input": ["a", "b", "c"], "encoding_format": "float", "dimensions": 2}
    ]
