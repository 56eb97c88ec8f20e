"""Tool calls shared by the backends: deltas assembled into whole calls, the schema that forces
a call, and the stream that turns the forced JSON into a call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llmserve import errors
from llmserve.backends._tools import (
    ForcedToolStream,
    ToolCallAssembler,
    finished,
    forced_messages,
    forced_schema,
)
from llmserve.domain import (
    GenerationRequest,
    GenerationResult,
    Message,
    StreamEvent,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

WEATHER = Tool("get_weather", "Weather", {"type": "object", "properties": {"city": {}}})
TIME = Tool("get_time", None, {"properties": {"zone": {}}})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _request(choice: ToolChoice) -> GenerationRequest:
    return GenerationRequest((Message("user", "x"),), tools=(WEATHER, TIME), tool_choice=choice)


def test_deltas_become_whole_calls_in_index_order() -> None:
    calls = ToolCallAssembler()
    for delta in (
        ToolCallDelta(1, "b", "get_time", ""),
        ToolCallDelta(0, "a", "get_weather", '{"ci'),
        ToolCallDelta(0, None, None, 'ty": "Oslo"}'),
        ToolCallDelta(1, None, None, ""),
    ):
        calls.add(delta)
    assert calls.calls() == [
        ToolCall("a", "get_weather", {"city": "Oslo"}),
        ToolCall("b", "get_time", {}),
    ]
    broken = ToolCallAssembler()
    broken.add(ToolCallDelta(0, "a", "f", '{"x": '))
    with pytest.raises(errors.BackendStreamError, match="not valid JSON"):
        broken.calls()


def test_calls_make_the_done_reason_tool_calls_unless_cut() -> None:
    call = [ToolCall("a", "f", {})]
    assert finished("stop", Usage(), call).done_reason == "tool_calls"
    assert finished("length", Usage(), call).done_reason == "length"
    assert finished("stop", Usage(), []).done_reason == "stop"


def test_the_forcing_schema_per_tool_choice() -> None:
    assert forced_schema(_request(ToolChoice("auto"))) is None
    assert forced_schema(_request(ToolChoice("none"))) is None
    assert forced_schema(_request(ToolChoice("function", "get_time"))) == {
        "type": "object",
        "properties": {"zone": {}},
    }
    required = forced_schema(_request(ToolChoice("required")))
    assert required is not None
    assert [v["properties"]["name"] for v in required["anyOf"]] == [
        {"const": "get_weather"},
        {"const": "get_time"},
    ]
    assert required["anyOf"][0]["properties"]["arguments"] == WEATHER.parameters
    last = forced_messages(_request(ToolChoice("required")))[-1]
    assert last.role == "system" and "get_weather: Weather" in last.content


class _Stream:
    """A backend stream that yields ``texts`` and ends with ``done_reason``."""

    def __init__(self, texts: list[str], done_reason: str = "stop") -> None:
        self._texts = texts
        self._done_reason = done_reason
        self.result: GenerationResult | None = None
        self.tokens_received = 0
        self.failure: BaseException | None = None
        self.closed = False

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        for text in self._texts:
            self.tokens_received += 1
            yield [text]
        self.result = GenerationResult(self._done_reason, Usage(3, len(self._texts)))

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_a_forced_call_streams_as_one_call_at_the_end() -> None:
    inner = _Stream(['{"name": "get_time", ', '"arguments": {"zone": "CET"}}'])
    stream = ForcedToolStream(inner, _request(ToolChoice("required")))  # type: ignore[arg-type]
    batches = [batch async for batch in stream.batches()]
    (delta,) = batches[0]
    assert isinstance(delta, ToolCallDelta) and (delta.index, delta.name) == (0, "get_time")
    assert delta.arguments == '{"zone":"CET"}'
    assert stream.result is not None
    assert stream.result.tool_calls == [ToolCall(delta.id or "", "get_time", {"zone": "CET"})]
    assert (stream.result.done_reason, stream.result.usage) == ("tool_calls", Usage(3, 2))
    await stream.aclose()
    assert inner.closed


@pytest.mark.anyio
async def test_a_forced_call_cut_by_the_token_limit_ends_at_the_limit_without_a_call() -> None:
    """As OpenAI and Anthropic answer a call that does not fit: a finished answer that says the
    limit ended it (``length``), not a failure of the server."""
    stream = ForcedToolStream(
        _Stream(['{"city": '], "length"), _request(ToolChoice("function", "get_weather"))
    )  # type: ignore[arg-type]
    assert [batch async for batch in stream.batches()] == []
    assert stream.failure is None and stream.result is not None
    assert (stream.result.done_reason, stream.result.tool_calls) == ("length", [])
    assert stream.result.usage == Usage(3, 1)
