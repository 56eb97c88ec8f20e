"""OpenAI's wire format: stream chunks, whole responses and the error envelope.

Streams follow OpenAI's framing, event by event:

* chat: a first chunk with ``delta: {"role": "assistant", "content": ""}``, one chunk per text
  fragment (``delta.content``), then a chunk with an empty ``delta`` and the ``finish_reason``;
  a tool call is a first delta with ``index``, ``id``, ``type: "function"`` and
  ``function.name`` (``arguments: ""``), then deltas carrying ``arguments`` fragments for the
  same ``index``; the answer then ends with ``finish_reason: "tool_calls"``;
  completions: one chunk per fragment (``text``), then one with ``text: ""`` and the reason;
* with ``stream_options.include_usage`` every chunk carries ``"usage": null`` and one more chunk
  follows with ``choices: []`` and the ``usage``;
* the end is ``data: [DONE]``.

**An error after the first streamed byte** (the status line is gone) is sent as one final
``data: {"error": {"message", "type", "param", "code"}}`` event and the stream ends *without*
``data: [DONE]``, which is what vLLM and other OpenAI-compatible servers do; OpenAI's SDKs raise
``APIError`` on such an event, and a client reading raw SSE sees that the answer is cut short.
Everything checkable before the first byte gets a real status code instead.

Errors before the first byte use OpenAI's envelope with the status, ``type`` and ``code`` each
error type declares (``llmserve/errors.py``; the body is built in ``api/errors.py``);
:class:`OpenAIRoute` converts llmserve errors, the framework's refusals (a body that cannot be
parsed) *and* FastAPI's request validation errors (422 elsewhere, 400 here, ``param`` naming the
field) for the routes that use it, so the native routes keep their own formats.

Per fragment the work is one ``orjson.dumps`` of the text and two concatenations: the constant
parts of a chunk are encoded once per stream.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llmserve import errors
from llmserve.api import errors as api_errors
from llmserve.api.errors import openai_envelope as envelope
from llmserve.api.openai_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    CompletionUsage,
    FunctionCall,
    ToolCallItem,
)
from llmserve.api.sse import framed_events
from llmserve.domain import GenerationResult, StreamEvent, ToolCall, ToolCallDelta, Usage
from llmserve.services.generation import Generation

DONE = b"data: [DONE]\n\n"
_HOLE = "\x00llmserve-hole\x00"  # stands for the per-fragment text while templates are encoded


def new_id(prefix: str) -> str:
    """``chatcmpl-…`` / ``cmpl-…``: a prefix and 24 random hex digits."""
    return f"{prefix}-{secrets.token_hex(12)}"


def finish_reason(result: GenerationResult | None) -> str:
    """OpenAI's ``finish_reason`` for a done reason: ``length``, ``tool_calls`` or ``stop``."""
    if result is not None and result.done_reason in ("length", "tool_calls"):
        return result.done_reason
    return "stop"


def openai_tool_calls(calls: list[ToolCall]) -> list[ToolCallItem]:
    return [
        ToolCallItem(id=c.id, function=FunctionCall(name=c.name, arguments=json.dumps(c.arguments)))
        for c in calls
    ]


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


# -- errors ----------------------------------------------------------------------------------


def error_type(error: errors.LlmserveError | type[errors.LlmserveError]) -> str:
    """OpenAI's error ``type`` for an error (or error type)."""
    return error.openai_type


error_body = api_errors.openai_error_body


def error_response(error: errors.LlmserveError) -> JSONResponse:
    return api_errors.error_response(error, face="openai")


def error_event(error: errors.LlmserveError) -> bytes:
    return b"data: " + json.dumps(error_body(error), separators=(",", ":")).encode() + b"\n\n"


def param_of(loc: Sequence[str | int]) -> str | None:
    """OpenAI's spelling of a field's location: ``messages.[0].content``."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    param = ""
    for part in parts:
        if isinstance(part, int):
            param += f".[{part}]"
        else:
            param += f".{part}" if param else str(part)
    return param or None


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as OpenAI's 400; the first error names the parameter."""
    first: dict[str, Any] = next(iter(exc.errors()), {})
    kind, msg = str(first.get("type", "")), str(first.get("msg", "invalid request"))
    param = param_of(first.get("loc", ()))
    if kind == "json_invalid":
        message, param, code = "We could not parse the JSON body of your request.", None, None
    elif param is None:
        message = "The request body must be a JSON object (Content-Type: application/json)."
        code = None
    elif kind == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    elif kind == "unsupported_parameter":
        message, code = msg, kind  # the message names the parameter already
    else:
        code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
        message = f"Invalid value for '{param}': {msg}."
    return JSONResponse(envelope(message, "invalid_request_error", param, code), status_code=400)


class OpenAIRoute(api_errors.FaceRoute):
    """A route whose failures before the first byte are answered in OpenAI's envelope."""

    face = "openai"
    validation = staticmethod(validation_error_response)


# -- whole responses ---------------------------------------------------------------------------


def _usage(generation: Generation) -> CompletionUsage:
    usage = generation.result.usage if generation.result is not None else Usage()
    return CompletionUsage(**usage_dict(usage))


def chat_completion(generation: Generation) -> ChatCompletion:
    calls = generation.result.tool_calls if generation.result is not None else []
    message = AssistantMessage(
        content=generation.text or (None if calls else ""),
        tool_calls=openai_tool_calls(calls) if calls else None,
    )
    return ChatCompletion(
        id=new_id(ChatChunks.id_prefix),
        created=int(time.time()),
        model=generation.model,
        choices=[ChatChoice(message=message, finish_reason=finish_reason(generation.result))],
        usage=_usage(generation),
    )


def text_completion(generation: Generation) -> Completion:
    return Completion(
        id=new_id(CompletionChunks.id_prefix),
        created=int(time.time()),
        model=generation.model,
        choices=[
            CompletionChoice(text=generation.text, finish_reason=finish_reason(generation.result))
        ],
        usage=_usage(generation),
    )


# -- streams ---------------------------------------------------------------------------------


def _data(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _template(payload: dict[str, Any]) -> tuple[bytes, bytes]:
    """``payload`` as SSE bytes, split where ``_HOLE`` stands: (before, after)."""
    head, tail = json.dumps(payload, separators=(",", ":")).split(json.dumps(_HOLE))
    return b"data: " + head.encode(), tail.encode() + b"\n\n"


class ChunkEncoder:
    """The SSE events of one OpenAI stream (subclasses: chat and text completions)."""

    object_name: str
    id_prefix: str

    def __init__(self, id_: str, created: int, model: str, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self._calls_started: set[int] = set()  # tool-call indexes whose first delta went out
        self._base: dict[str, Any] = {
            "id": id_,
            "object": self.object_name,
            "created": created,
            "model": model,
        }
        self._head, self._tail = _template(self._chunk(self._choice(_HOLE, None)))

    @classmethod
    def for_generation(cls, generation: Generation, *, include_usage: bool) -> ChunkEncoder:
        """An encoder with a fresh id, for a stream of ``generation``."""
        return cls(
            new_id(cls.id_prefix), int(time.time()), generation.model, include_usage=include_usage
        )

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {**self._base, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def start(self) -> bytes | None:
        """What precedes the first fragment, if anything."""
        return None

    def text(self, text: str) -> bytes:
        return self._head + orjson.dumps(text) + self._tail

    def texts(self, batch: list[str]) -> bytes:
        return b"".join([self.text(piece) for piece in batch])

    def events(self, batch: list[StreamEvent]) -> bytes:
        """A batch that may hold tool-call deltas (text only: ``text`` per piece)."""
        return b"".join(
            [
                (
                    self.text(e)
                    if type(e) is str
                    else self.tool_call(e)  # type: ignore[arg-type]  # no Thinking on this face
                )
                for e in batch
            ]
        )

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        raise errors.UnsupportedError("tool calls are answered on /v1/chat/completions only")

    def finish(self, reason: str) -> bytes:
        return _data(self._chunk(self._choice("", reason)))

    def usage(self, usage: Usage) -> bytes:
        return _data({**self._base, "choices": [], "usage": usage_dict(usage)})


class ChatChunks(ChunkEncoder):
    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        delta = {} if finish is not None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def start(self) -> bytes:
        delta = {"role": "assistant", "content": ""}
        return _data(
            self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})
        )

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        """The first delta of a call: index, id, type and name; then argument fragments."""
        started = self._calls_started
        out = b""
        if delta.index not in started:
            started.add(delta.index)
            head = {
                "index": delta.index,
                "id": delta.id,
                "type": "function",
                "function": {"name": delta.name, "arguments": ""},
            }
            out = self._delta({"tool_calls": [head]})
        if delta.arguments:
            part = {"index": delta.index, "function": {"arguments": delta.arguments}}
            out += self._delta({"tool_calls": [part]})
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _data(
            self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})
        )


class CompletionChunks(ChunkEncoder):
    object_name = "text_completion"
    id_prefix = "cmpl"

    def _choice(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def openai_events(generation: Generation, chunks: ChunkEncoder) -> AsyncIterator[bytes]:
    """The SSE events of one generation in OpenAI's format; closes the generation at the end."""

    def tail() -> bytes:
        parts = [chunks.finish(finish_reason(generation.result))]
        if chunks.include_usage:
            parts.append(chunks.usage((generation.result or GenerationResult()).usage))
        return b"".join([*parts, DONE])

    # Only a request that offers tools can stream tool-call deltas: the others keep the
    # one-type path (no type test per token).
    encode = chunks.events if generation.request.tools else chunks.texts
    return framed_events(
        generation,
        encode=encode,
        tail=tail,
        head=chunks.start(),
        error=error_event,
    )
