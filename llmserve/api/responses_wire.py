"""OpenAI's Responses wire format: the ``response`` object and its event stream.

The output is a list of items: a ``message`` item (one ``output_text`` part) per run of text and
a ``function_call`` item (``call_id``: the backend's tool-call id) per tool call. A stream is
Server-Sent Events (``event:`` + ``data:``), every event with its ``sequence_number``::

    response.created, response.in_progress
    per text run:  response.output_item.added, response.content_part.added,
                   response.output_text.delta …, response.output_text.done,
                   response.content_part.done, response.output_item.done
    per tool call: response.output_item.added, response.function_call_arguments.delta …,
                   response.function_call_arguments.done, response.output_item.done
    response.completed (response.incomplete at the token limit)

An error after the first byte is a ``response.failed`` event (the response with ``status:
"failed"`` and its ``error``), and the stream ends; before it, OpenAI's envelope with a real
status (the route uses :class:`~llmserve.api.openai_wire.OpenAIRoute`).

Per text fragment the work is one ``orjson.dumps``, the sequence number's digits and a few
concatenations: the constant parts of the delta event are encoded when its item opens.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from llmserve import errors
from llmserve.api.errors import responses_error
from llmserve.api.responses_schemas import ResponsesRequest
from llmserve.api.sse import framed_events
from llmserve.domain import GenerationResult, StreamEvent, ToolCallDelta, Usage
from llmserve.services.generation import Generation


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def echo(body: ResponsesRequest) -> dict[str, Any]:
    """The request's settings, as a response object repeats them."""
    fmt = body.text.format if body.text is not None else None
    choice = body.tool_choice
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": body.temperature,
        "text": {
            "format": (
                fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
            )
        },
        "tool_choice": (
            choice.model_dump()
            if choice is not None and not isinstance(choice, str)
            else (choice or "auto")
        ),
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
    }


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    content = [part] if status != "in_progress" else []
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


class ResponseShell:
    """A response's constant fields: id, creation time, model and the request's echo."""

    def __init__(self, model: str, settings: dict[str, Any]) -> None:
        self.fields = {
            "id": _id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            **settings,
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        result: GenerationResult | None = None,
        error: errors.LlmserveError | None = None,
    ) -> dict[str, Any]:
        incomplete = status == "incomplete"
        return {
            **self.fields,
            "status": status,
            "error": responses_error(error) if error is not None else None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": output,
            "usage": usage_object(result.usage) if result is not None else None,
        }


def _status(result: GenerationResult | None) -> str:
    return "incomplete" if result is not None and result.done_reason == "length" else "completed"


def whole_response(generation: Generation, settings: dict[str, Any]) -> dict[str, Any]:
    """The non-stream answer: every output item, the status and the usage."""
    result = generation.result
    status = _status(result)
    calls = result.tool_calls if result is not None else []
    output: list[dict[str, Any]] = []
    if generation.text or not calls:
        output.append(message_item(_id("msg"), generation.text, status))
    output.extend(
        call_item(_id("fc"), c.id, c.name, orjson.dumps(c.arguments).decode(), "completed")
        for c in calls
    )
    return ResponseShell(generation.model, settings).response(status, output, result)


class ResponseEvents:
    """The events of one Responses stream; items open as the output changes kind."""

    def __init__(self, generation: Generation, settings: dict[str, Any]) -> None:
        self._generation = generation
        self._shell = ResponseShell(generation.model, settings)
        self._seq = -1
        self._output: list[dict[str, Any]] = []  # finished items
        self._open: int | str | None = None  # "text", a tool call's index, or None
        self._item_id = ""
        self._pieces: list[str] = []  # the open item's text or arguments
        self._call: ToolCallDelta | None = None
        self._head = self._mid = b""

    def _event(self, name: str, payload: dict[str, Any]) -> bytes:
        self._seq += 1
        data = {"type": name, "sequence_number": self._seq, **payload}
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> bytes:
        response = self._shell.response("in_progress", [])
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    # -- items --

    def _close(self, status: str = "completed") -> bytes:
        kind, index = self._open, len(self._output)
        if kind is None:
            return b""
        self._open = None
        text = "".join(self._pieces)
        where = {"item_id": self._item_id, "output_index": index}
        if kind == "text":
            item = message_item(self._item_id, text, status)
            part = item["content"][0]
            out = self._event(
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done", {**where, "content_index": 0, "part": part}
            )
        else:
            call = self._call
            assert call is not None
            item = call_item(self._item_id, call.id or "", call.name or "", text, "completed")
            out = self._event(
                "response.function_call_arguments.done",
                {**where, "arguments": text, "name": call.name},
            )
        self._output.append(item)
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def _open_text(self) -> bytes:
        out = self._close()
        index = len(self._output)
        self._open, self._item_id, self._pieces = "text", _id("msg"), []
        where = {"item_id": self._item_id, "output_index": index}
        out += self._event(
            "response.output_item.added",
            {"output_index": index, "item": message_item(self._item_id, "", "in_progress")},
        )
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out += self._event(
            "response.content_part.added", {**where, "content_index": 0, "part": part}
        )
        head = orjson.dumps(
            {"type": "response.output_text.delta", **where, "content_index": 0, "logprobs": []}
        )
        self._head = (
            b"event: response.output_text.delta\ndata: " + head[:-1] + b',"sequence_number":'
        )
        self._mid = b',"delta":'
        return out

    def texts(self, batch: list[str]) -> bytes:
        """A batch of text fragments (a request without tools has nothing else)."""
        out = b"" if self._open == "text" else self._open_text()
        head, mid = self._head, self._mid
        seq = self._seq
        parts = []
        for text in batch:
            seq += 1
            parts.append(head + str(seq).encode() + mid + orjson.dumps(text) + b"}\n\n")
        self._seq = seq
        self._pieces.extend(batch)
        return out + b"".join(parts)

    def events(self, batch: list[StreamEvent]) -> bytes:
        """A batch that may hold tool-call deltas."""
        out = b""
        for piece in batch:
            if type(piece) is str:
                out += self.texts([piece])
            elif type(piece) is ToolCallDelta:
                out += self._tool_call(piece)
        return out

    def _tool_call(self, delta: ToolCallDelta) -> bytes:
        out = b""
        if self._open != delta.index:
            out = self._close()
            index = len(self._output)
            self._open, self._item_id, self._pieces, self._call = (
                delta.index,
                _id("fc"),
                [],
                delta,
            )
            item = call_item(self._item_id, delta.id or "", delta.name or "", "", "in_progress")
            out += self._event("response.output_item.added", {"output_index": index, "item": item})
        if delta.arguments:
            self._pieces.append(delta.arguments)
            out += self._event(
                "response.function_call_arguments.delta",
                {
                    "item_id": self._item_id,
                    "output_index": len(self._output),
                    "delta": delta.arguments,
                },
            )
        return out

    # -- the end --

    def tail(self) -> bytes:
        result = self._generation.result or GenerationResult()
        status = _status(result)
        out = self._close("incomplete" if status == "incomplete" else "completed")
        response = self._shell.response(status, self._output, result)
        return out + self._event(f"response.{status}", {"response": response})

    def failed(self, error: errors.LlmserveError) -> bytes:
        """The last event of a stream that failed after it started."""
        response = self._shell.response("failed", self._output, error=error)
        return self._event("response.failed", {"response": response})


def shutdown_event() -> bytes:
    """The last event of a stream the server cut at the end of its shutdown grace period
    (OpenAI's stream-level ``error`` event: the response's sequence is unknown here)."""
    error = responses_error(errors.ShuttingDownError())
    payload = {"type": "error", **error, "param": None, "sequence_number": 0}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


SHUTDOWN_EVENT = shutdown_event()


def response_events(generation: Generation, settings: dict[str, Any]) -> AsyncIterator[bytes]:
    """The SSE events of one generation as a Responses stream; closes the generation at the
    end."""
    events = ResponseEvents(generation, settings)
    # Only a request that offers tools can stream tool-call deltas: the others keep the
    # one-type path (no type test per token).
    encode = events.events if generation.request.tools else events.texts
    return framed_events(
        generation, encode=encode, tail=events.tail, head=events.start(), error=events.failed
    )
