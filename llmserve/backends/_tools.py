"""Tool calls shared by the backends: assembling deltas, and forcing a call by a JSON schema.

``tool_choice`` is never ignored. ``required`` and a named function are enforced by engines
that can (OpenAI-compatible servers take ``tool_choice`` as sent); where an engine cannot
(Ollama, the embedded llama.cpp), the output is constrained to JSON that *is* the call — the
named tool's ``parameters``, or for ``required`` one of ``{"name": const, "arguments":
parameters}`` per tool — through Ollama's ``format`` or a llama.cpp grammar, and
:class:`ForcedToolStream` turns that JSON into a tool call with done reason ``tool_calls``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmserve import errors
from llmserve.backends.base import GenerationStream
from llmserve.domain import (
    GenerationRequest,
    GenerationResult,
    Message,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
    new_call_id,
)


def parse_arguments(text: str, name: str) -> dict[str, Any]:
    """A call's arguments as a JSON object (an empty text is ``{}``)."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except ValueError:
        raise errors.BackendStreamError(
            f"the model's call of '{name}' has arguments that are not valid JSON"
        ) from None
    if not isinstance(value, dict):
        raise errors.BackendStreamError(f"the model's call of '{name}' has non-object arguments")
    return value


class ToolCallAssembler:
    """Collects :class:`ToolCallDelta` events into whole :class:`ToolCall` s, by index."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, [fragments]]

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, delta: ToolCallDelta) -> None:
        call = self._calls.get(delta.index)
        if call is None:
            call = self._calls[delta.index] = [delta.id, delta.name, []]
        else:
            call[0] = call[0] or delta.id
            call[1] = call[1] or delta.name
        if delta.arguments:
            call[2].append(delta.arguments)

    def calls(self) -> list[ToolCall]:
        found = []
        for index in sorted(self._calls):
            id_, name, fragments = self._calls[index]
            name = name or ""
            found.append(
                ToolCall(id_ or new_call_id(), name, parse_arguments("".join(fragments), name))
            )
        return found


def finished(
    done_reason: str, usage: Usage, calls: list[ToolCall], stop_sequence: str | None = None
) -> GenerationResult:
    """The end of a stream; ``tool_calls`` whenever the answer holds calls (Ollama says
    ``stop``), unless the token limit cut it. ``stop_sequence``: the stop string the engine
    says ended it (kept only with done reason ``stop``)."""
    if calls and done_reason != "length":
        done_reason = "tool_calls"
    matched = stop_sequence if done_reason == "stop" else None
    return GenerationResult(done_reason, usage, calls, stop_sequence=matched)


# -- forcing a call through the output format --------------------------------------------------


def forced_schema(request: GenerationRequest) -> dict[str, Any] | None:
    """The JSON schema that forces the call ``tool_choice`` asks for; None if not forced."""
    choice = request.tool_choice
    if choice.mode not in ("required", "function") or not request.tools:
        return None
    tools = request.offered_tools
    if choice.mode == "function":
        return _object_schema(tools[0].parameters)
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": _object_schema(tool.parameters),
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def forced_messages(request: GenerationRequest) -> tuple[Message, ...]:
    """The conversation with a last system message that says which call to write."""
    tools = request.offered_tools
    if request.tool_choice.mode == "function":
        tool = tools[0]
        what = f"Call the function `{tool.name}`"
        if tool.description:
            what += f" ({tool.description})"
        instruction = f"{what}: answer with a JSON object holding its arguments, and nothing else."
    else:
        listed = "\n".join(
            f"- {tool.name}" + (f": {tool.description}" if tool.description else "")
            for tool in tools
        )
        instruction = (
            "Call one of these functions: answer with a JSON object "
            '{"name": <function name>, "arguments": {...}} and nothing else.\n' + listed
        )
    return (*request.messages, Message("system", instruction))


def _object_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    return parameters if parameters.get("type") == "object" else {"type": "object", **parameters}


class ForcedToolStream:
    """Wraps the stream of a forced call: collects the JSON text, yields one tool call."""

    def __init__(self, inner: GenerationStream, request: GenerationRequest) -> None:
        self._inner = inner
        self._request = request
        self.result: GenerationResult | None = None
        self.failure: BaseException | None = None

    @property
    def tokens_received(self) -> int:
        return self._inner.tokens_received

    @tokens_received.setter  # the protocol's attribute is settable
    def tokens_received(self, value: int) -> None:
        self._inner.tokens_received = value

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[StreamEvent]]:
        text: list[str] = []
        try:
            async for batch in self._inner.batches():
                text.extend(event for event in batch if type(event) is str)
            inner = self._inner.result
            if inner is None:
                return
            if inner.done_reason == "length":
                # The token limit cut the call short: no call, and the answer says why (the
                # limit), as OpenAI's and Anthropic's do when a call does not fit.
                self.result = finished("length", inner.usage, [])
                return
            call = self._call("".join(text))
            self.result = finished("tool_calls", inner.usage, [call])
            yield [ToolCallDelta(0, call.id, call.name, orjson.dumps(call.arguments).decode())]
        except BaseException as exc:
            self.failure = self._inner.failure or exc
            raise

    def _call(self, text: str) -> ToolCall:
        choice = self._request.tool_choice
        if choice.mode == "function":
            name = choice.name or ""
            return ToolCall(new_call_id(), name, parse_arguments(text, name))
        value = parse_arguments(text, "a function")
        chosen, arguments = value.get("name"), value.get("arguments", {})
        if not isinstance(chosen, str) or not isinstance(arguments, dict):
            raise errors.BackendStreamError("the model's forced tool call has the wrong shape")
        return ToolCall(new_call_id(), chosen, arguments)

    async def aclose(self) -> None:
        await self._inner.aclose()
