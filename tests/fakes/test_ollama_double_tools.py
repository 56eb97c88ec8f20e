"""Scripted tool calls come back from ``/api/chat`` the way each Ollama generation sends them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fakes.double_testing import BUILT_IN, lines
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.fakes.ollama_tools import CALL_ID

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name in ("get_weather", "get_time")
]
CALLS = [
    {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C", "days": 2}},
    {"name": "get_time", "arguments": {"zone": {"name": "Europe/Paris", "dst": True}}},
]


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    request = {"model": BUILT_IN, "messages": [{"role": "user", "content": "go"}], **body}
    return client.post("/api/chat", json=request)


def test_current_style_streams_one_chunk_per_call_then_stop(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(Script(tool_calls=CALLS))
    response = chat(client, tools=TOOLS)
    *chunks, final = lines(response)
    assert len(chunks) == 2
    for index, (chunk, call) in enumerate(zip(chunks, CALLS, strict=True)):
        assert chunk["done"] is False
        message = chunk["message"]
        assert list(message) == ["role", "content", "tool_calls"]
        assert (message["role"], message["content"]) == ("assistant", "")
        (sent,) = message["tool_calls"]
        assert list(sent) == ["id", "function"] and CALL_ID.fullmatch(sent["id"])
        assert sent["function"] == {"index": index, **call}
        assert list(sent["function"]) == ["index", "name", "arguments"]
    ids = [chunk["message"]["tool_calls"][0]["id"] for chunk in chunks]
    assert len(set(ids)) == 2
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 2
    # Arguments keep their key order on the wire and are never JSON strings.
    assert '"arguments":{"city":"Paris","unit":"C","days":2}' in response.text
    assert '"type"' not in response.text
    record = double.generations[-1]
    assert [call["id"] for call in record.tool_calls_sent] == ids


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (
            "index",
            [
                {"function": {"name": "get_weather", "arguments": CALLS[0]["arguments"]}},
                {"function": {"index": 1, "name": "get_time", "arguments": CALLS[1]["arguments"]}},
            ],
        ),
        (
            "bare",
            [
                {"function": {"name": "get_weather", "arguments": CALLS[0]["arguments"]}},
                {"function": {"name": "get_time", "arguments": CALLS[1]["arguments"]}},
            ],
        ),
    ],
)
def test_older_styles(
    client: httpx.Client, double: OllamaDouble, style: str, expected: list[dict[str, Any]]
) -> None:
    double.enqueue(Script(tool_calls=CALLS, tool_call_style=style, tool_chunks="together"))
    *chunks, final = lines(chat(client, tools=TOOLS))
    (chunk,) = chunks
    assert chunk["message"] == {"role": "assistant", "content": "", "tool_calls": expected}
    assert final["done_reason"] == "stop"


def test_text_comes_first_then_the_calls(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["Let me ", "check."], tool_calls=CALLS[:1]))
    *chunks, _ = lines(chat(client, tools=TOOLS))
    assert [c["message"]["content"] for c in chunks] == ["Let me ", "check.", ""]
    assert "tool_calls" not in chunks[0]["message"]
    assert chunks[2]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_without_streaming_the_calls_are_collected(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.enqueue(
        Script(tool_calls=CALLS, tool_call_style="current"),
        Script(tokens=["On it."], tool_calls=CALLS, tool_chunks="together"),
    )
    bare = chat(client, tools=TOOLS, stream=False).json()
    assert bare["done_reason"] == "stop"
    message = bare["message"]
    assert list(message) == ["role", "content", "tool_calls"]
    assert message["content"] == ""
    assert [call["function"] for call in message["tool_calls"]] == [
        {"index": 0, **CALLS[0]},
        {"index": 1, **CALLS[1]},
    ]
    with_text = chat(client, tools=TOOLS, stream=False).json()["message"]
    assert with_text["content"] == "On it." and len(with_text["tool_calls"]) == 2


def test_calls_need_tools_in_the_request(client: httpx.Client, double: OllamaDouble) -> None:
    """Ollama parses tool calls only when ``tools`` were offered: otherwise it is all text."""
    double.enqueue(Script(tool_calls=CALLS), Script(tool_calls=CALLS))
    plain = chat(client, stream=False).json()["message"]
    assert plain == {"role": "assistant", "content": "Hello, world!"}
    empty = lines(chat(client, tools=[]))
    assert all("tool_calls" not in item["message"] for item in empty)
    assert double.generations[-1].tool_calls_sent == []


def test_tool_chunks_count_as_positions(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tokens=["a"], tool_calls=CALLS, error_after=2, error="boom"))
    parsed = lines(chat(client, tools=TOOLS))
    assert parsed[0]["message"]["content"] == "a"
    assert parsed[1]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert parsed[2:] == [{"error": "boom"}]
    assert len(double.generations[-1].tool_calls_sent) == 1
    double.enqueue(Script(tool_calls=CALLS))
    capped = lines(chat(client, tools=TOOLS, options={"num_predict": 1}))
    assert capped[-1]["done_reason"] == "length" and len(capped) == 2


def test_go_escaping_applies_inside_arguments(client: httpx.Client, double: OllamaDouble) -> None:
    double.enqueue(Script(tool_calls=[{"name": "html", "arguments": {"q": "<a&b>"}}]))
    response = chat(client, tools=TOOLS)
    assert '"q":"\\u003ca\\u0026b\\u003e"' in response.text
    assert json.loads(response.text.split("\n")[0])["message"]["tool_calls"][0]["function"][
        "arguments"
    ] == {"q": "<a&b>"}


def test_bad_scripts_fail_early() -> None:
    with pytest.raises(ValueError, match="tool_call_style"):
        Script(tool_call_style="openai")
    with pytest.raises(ValueError, match="tool_chunks"):
        Script(tool_chunks="some")
    with pytest.raises(ValueError, match="never a string"):
        Script(tool_calls=[{"name": "f", "arguments": '{"a": 1}'}])
    with pytest.raises(ValueError, match="name"):
        Script(tool_calls=[{"arguments": {}}])
    assert Script(tool_calls=[{"name": "f"}]).tool_calls == [{"name": "f"}]
