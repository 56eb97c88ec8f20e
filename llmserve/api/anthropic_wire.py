"""Anthropic's wire format: the Messages stream, the whole message and the error shape.

A stream is Server-Sent Events, each with its ``event:`` name (Anthropic's SDKs skip events
without one)::

    message_start
    content_block_start  (a text block, or a tool_use block with its id, name and input {})
    content_block_delta  (text_delta, or input_json_delta with a partial_json fragment) …
    content_block_stop
    … one block per text run and per tool call …
    message_delta        (stop_reason, stop_sequence, usage: input and output tokens)
    message_stop

The prompt's token count is known only at the end, so ``message_start`` says 0 input tokens and
``message_delta`` gives the count (its usage is cumulative: the SDKs take it). While nothing is
sent, ``event: ping`` goes out. An error after the first byte is one ``event: error`` with the
Anthropic error body, and the stream ends without ``message_stop``; before it, the same body
comes with a real status (``api/errors.py``). :class:`AnthropicRoute` answers the refusals of
the routes that use it (validation 400s included) in that shape.

Per text fragment the work is one ``orjson.dumps`` and two concatenations: the constant parts of
the block's delta event are encoded when the block opens.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llmserve import errors
from llmserve.api import errors as api_errors
from llmserve.api.anthropic_schemas import (
    MessageObject,
    StopReason,
    TextContent,
    ToolUseContent,
    Usage,
)
from llmserve.api.sse import framed_events
from llmserve.domain import GenerationResult, StreamEvent, ToolCallDelta
from llmserve.services.generation import Generation

PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(result: GenerationResult | None) -> StopReason:
    """Anthropic's ``stop_reason`` for a done reason: ``stop_sequence`` when the backend said
    which stop string ended it (``stop_sequence`` then gives it), else ``end_turn``."""
    reason = result.done_reason if result is not None else "stop"
    if reason == "length":
        return "max_tokens"
    if reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop_sequence(result) is not None else "end_turn"


def stop_sequence(result: GenerationResult | None) -> str | None:
    """The matched stop string Anthropic's ``stop_sequence`` gives, or None."""
    if result is None or result.done_reason != "stop":
        return None
    return result.stop_sequence


def event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# -- errors ------------------------------------------------------------------------------------


def error_event(error: errors.LlmserveError) -> bytes:
    return event("error", api_errors.anthropic_error_body(error))


#: The last event of a stream the server cut at the end of its shutdown grace period.
SHUTDOWN_EVENT = error_event(errors.ShuttingDownError())


def _location(loc: tuple[Any, ...]) -> str:
    parts = loc[1:] if loc and loc[0] == "body" else loc
    # Union members (``str``, ``list[TextBlock]``) are pydantic's names, not the client's.
    return ".".join(str(p) for p in parts if not (isinstance(p, str) and ("[" in p or p == "str")))


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as Anthropic's 400 ``invalid_request_error``: ``field: what is wrong``."""
    first: dict[str, Any] = next(iter(exc.errors()), {})
    kind, msg = str(first.get("type", "")), str(first.get("msg", "invalid request"))
    where = _location(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        message = "The request body is not valid JSON."
    elif not where:
        message = msg.removeprefix("Value error, ")
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            message = "The request body must be a JSON object."
    else:
        message = f"{where}: {msg.removeprefix('Value error, ')}"
    body = api_errors.anthropic_envelope(message, "invalid_request_error")
    return JSONResponse(body, status_code=400)


class AnthropicRoute(api_errors.FaceRoute):
    """A route whose failures before the first byte are answered in Anthropic's shape."""

    face = "anthropic"
    validation = staticmethod(validation_error_response)


# -- the whole message -------------------------------------------------------------------------


def whole_message(generation: Generation) -> MessageObject:
    result = generation.result
    calls = result.tool_calls if result is not None else []
    content: list[TextContent | ToolUseContent] = []
    if generation.text or not calls:
        content.append(TextContent(text=generation.text))
    content.extend(ToolUseContent(id=c.id, name=c.name, input=c.arguments) for c in calls)
    usage = result.usage if result is not None else None
    return MessageObject(
        id=new_message_id(),
        model=generation.model,
        content=content,
        stop_reason=stop_reason(result),
        stop_sequence=stop_sequence(result),
        usage=Usage(
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        ),
    )


# -- the stream --------------------------------------------------------------------------------


class MessageEvents:
    """The events of one Messages stream: blocks open as the output changes kind."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation
        self._blocks = 0  # blocks opened so far; the open one is ``_blocks - 1``
        self._open: int | str | None = None  # "text", a tool call's index, or None
        self._head = b""
        self._tail = b"}}\n\n"

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._generation.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        index = self._blocks - 1
        return event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_text(self) -> bytes:
        out = self._close()
        index = self._blocks
        self._blocks += 1
        self._open = "text"
        self._head = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + str(index).encode()
            + b',"delta":{"type":"text_delta","text":'
        )
        block = {"type": "text", "text": ""}
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return out + event("content_block_start", start)

    def texts(self, batch: list[str]) -> bytes:
        """A batch of text fragments (a request without tools has nothing else)."""
        out = b"" if self._open == "text" else self._open_text()
        head, tail = self._head, self._tail
        return out + b"".join([head + orjson.dumps(text) + tail for text in batch])

    def events(self, batch: list[StreamEvent]) -> bytes:
        """A batch that may hold tool-call deltas."""
        out = b""
        for piece in batch:
            if type(piece) is str:
                if self._open != "text":
                    out += self._open_text()
                out += self._head + orjson.dumps(piece) + self._tail
            elif type(piece) is ToolCallDelta:
                out += self._tool_call(piece)
        return out

    def _tool_call(self, delta: ToolCallDelta) -> bytes:
        out = b""
        if self._open != delta.index:
            out = self._close()
            index = self._blocks
            self._blocks += 1
            self._open = delta.index
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": delta.id,
                "name": delta.name,
                "input": {},
            }
            start = {"type": "content_block_start", "index": index, "content_block": block}
            out += event("content_block_start", start)
        if delta.arguments:
            fragment = {"type": "input_json_delta", "partial_json": delta.arguments}
            payload = {"type": "content_block_delta", "index": self._blocks - 1, "delta": fragment}
            out += event("content_block_delta", payload)
        return out

    def tail(self) -> bytes:
        result = self._generation.result or GenerationResult()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(result), "stop_sequence": stop_sequence(result)},
            "usage": {
                "input_tokens": result.usage.prompt_tokens,
                "output_tokens": result.usage.completion_tokens,
            },
        }
        return (
            self._close()
            + event("message_delta", delta)
            + event("message_stop", {"type": "message_stop"})
        )


def message_events(generation: Generation) -> AsyncIterator[bytes]:
    """The SSE events of one generation in Anthropic's format; closes the generation at the end."""
    events = MessageEvents(generation)
    # Only a request that offers tools can stream tool-call deltas: the others keep the
    # one-type path (no type test per token).
    encode = events.events if generation.request.tools else events.texts
    return framed_events(
        generation, encode=encode, tail=events.tail, head=events.start(), error=error_event
    )
