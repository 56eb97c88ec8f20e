"""Ollama's wire format: NDJSON streams, timestamps, durations and ``{"error": …}`` lines.

A stream is ``application/x-ndjson``: one compact JSON object per line, each sent as it is
made. An error after the first line is one more line ``{"error": "…"}`` and the stream ends
with no ``done: true`` object, as Ollama's own streams do; before the first line, an error is
a normal status with the same body (``api/errors.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel

from llmserve import errors
from llmserve.domain import GenerationResult, StreamEvent, Thinking

if TYPE_CHECKING:
    from llmserve.services.generation import Generation

NDJSON_HEADERS = [
    (b"content-type", b"application/x-ndjson"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's request body for the OpenAPI document (Ollama's routes read the body
    themselves, the way Ollama does: ``api/ollama_schemas.parse_body``)."""
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@contextmanager
def as_ollama(*, invalid: str | None = None, not_found: str | None = None) -> Iterator[None]:
    """Ollama's own texts for llmserve's "invalid name" and "not installed" refusals (the
    name as the client sent it: ``model 'x' not found``)."""
    try:
        yield
    except errors.InvalidModelNameError:
        if invalid is None:
            raise
        raise errors.InvalidModelNameError(invalid) from None
    except errors.ModelNotFoundError:
        if not_found is None:
            raise
        raise errors.ModelNotFoundError(not_found) from None


def line(payload: Any) -> bytes:
    """One NDJSON line."""
    return orjson.dumps(payload) + b"\n"


def error_line(error: errors.LlmserveError) -> bytes:
    """The last line of a stream that failed after it started."""
    return line({"error": error.detail})


#: The last line of a stream the server cut at the end of its shutdown grace period.
SHUTDOWN_LINE = error_line(errors.ShuttingDownError())


def timestamp(ns: int | None = None) -> str:
    """Ollama's ``created_at``: UTC, RFC 3339, nanoseconds without trailing zeros."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def rfc3339(value: datetime | None) -> str:
    """A ``modified_at`` / ``expires_at`` as Ollama writes it (``0001-01-01T00:00:00Z`` if
    unknown, Go's zero time)."""
    if value is None:
        return "0001-01-01T00:00:00Z"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


class _Clock:
    """``created_at`` per batch of lines, cheaply: the date part is formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> bytes:
        seconds, fraction = divmod(time.time_ns(), 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        digits = f"{fraction:09d}".rstrip("0")
        return f"{self._prefix}.{digits}Z".encode() if digits else f"{self._prefix}Z".encode()


Endpoint = Literal["chat", "generate"]


class OllamaLines:
    """The NDJSON lines of one generation, as Ollama's ``/api/chat`` or ``/api/generate``
    writes them.

    Per text delta: ``{"model","created_at","message":{"role":"assistant","content"},"done":
    false}`` (generate: ``"response"``); a thinking delta has empty content and ``thinking``.
    Tool calls go out whole, in one line with empty content, once the answer is complete (the
    engine may have streamed their arguments in fragments); then the ``done: true`` line with
    ``done_reason`` and the counters (:func:`final_fields`). ``model`` is the name the client
    sent, as Ollama echoes it. The constant parts of a line are encoded once per stream.
    """

    def __init__(self, generation: Generation, model: str, endpoint: Endpoint) -> None:
        self._generation = generation
        self._model = model
        self._endpoint = endpoint
        self._clock = _Clock()
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        if endpoint == "chat":
            self._text = b'","message":{"role":"assistant","content":'
            self._thinking = b'","message":{"role":"assistant","content":"","thinking":'
            self._end = b'},"done":false}\n'
        else:
            self._text = b'","response":'
            self._thinking = b'","response":"","thinking":'
            self._end = b',"done":false}\n'

    def encode(self, batch: list[StreamEvent]) -> bytes:
        head = self._head + self._clock.now()
        text, thinking, end = head + self._text, head + self._thinking, self._end
        if len(batch) == 1 and type(batch[0]) is str:
            return text + orjson.dumps(batch[0]) + end
        lines = []
        for piece in batch:
            if type(piece) is str:
                lines.append(text + orjson.dumps(piece) + end)
            elif type(piece) is Thinking:
                lines.append(thinking + orjson.dumps(piece.text) + end)
            # tool-call deltas: the whole calls go out with the end (see the class doc)
        return b"".join(lines)

    def tail(self) -> bytes:
        result = self._generation.result
        out = b""
        if result is not None and result.tool_calls and self._endpoint == "chat":
            message = {"role": "assistant", "content": "", "tool_calls": wire_calls(result)}
            out = line(self._object(message=message, done=False))
        last = self._object(done=True) | final_fields(self._generation, self._endpoint)
        if self._endpoint == "chat":
            last["message"] = {"role": "assistant", "content": ""}
        else:
            last["response"] = ""
        return out + line(_ordered(last))

    def _object(self, **fields: Any) -> dict[str, Any]:
        return {"model": self._model, "created_at": timestamp(), **fields}


def whole_object(generation: Generation, model: str, endpoint: Endpoint) -> dict[str, Any]:
    """The one object of a ``stream: false`` answer: the whole text (and thinking, tool
    calls), ``done: true`` and the counters."""
    result = generation.result
    out: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if endpoint == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": generation.text}
        if generation.thinking:
            message["thinking"] = generation.thinking
        if result is not None and result.tool_calls:
            message["tool_calls"] = wire_calls(result)
        out["message"] = message
    else:
        out["response"] = generation.text
        if generation.thinking:
            out["thinking"] = generation.thinking
    out["done"] = True
    return _ordered(out | final_fields(generation, endpoint))


def load_object(model: str, endpoint: Endpoint, reason: Literal["load", "unload"]) -> bytes:
    """The answer to a generation with nothing to generate: the model was (un)loaded."""
    out: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if endpoint == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return orjson.dumps(out | {"done": True, "done_reason": reason})


def wire_calls(result: GenerationResult) -> list[dict[str, Any]]:
    """Tool calls as Ollama writes them: ``id``, ``function{index, name, arguments{…}}``."""
    return [
        {"id": call.id, "function": {"index": i, "name": call.name, "arguments": call.arguments}}
        for i, call in enumerate(result.tool_calls)
    ]


#: The counters of a final object, in Ollama's order; zero ones are left out, as Ollama does.
_COUNTERS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def final_fields(generation: Generation, endpoint: Endpoint) -> dict[str, Any]:
    """``done_reason``, generate's ``context``, and the counters, durations in nanoseconds.

    Ollama's own durations are kept when the engine is Ollama, plus the time the request waited
    for admission (in ``load_duration``, where Ollama counts its own scheduler's wait);
    ``total_duration`` is llmserve's, from arrival to now. Other engines: the same split
    measured here (the wait, the first token, the rest).
    """
    result = generation.result
    assert result is not None, "the generation has not ended"
    native = result.native
    now = time.perf_counter()
    waited = generation.admitted - generation.started
    first = generation.ttft if generation.ttft is not None else waited
    counters = {
        "total_duration": _ns(now - generation.started),
        "load_duration": _ns(waited) + int(native.get("load_duration") or 0),
        "prompt_eval_count": result.usage.prompt_tokens,
        "prompt_eval_duration": int(native.get("prompt_eval_duration") or _ns(first - waited)),
        "eval_count": result.usage.completion_tokens,
        "eval_duration": int(native.get("eval_duration") or _ns(now - generation.started - first)),
    }
    out: dict[str, Any] = {"done_reason": result.done_reason}
    if endpoint == "generate" and "context" in native:
        out["context"] = native["context"]
    out.update((name, value) for name, value in counters.items() if value > 0)
    for name, value in native.items():  # newer fields of Ollama's (logprobs…), as they came
        if name not in out and name not in _COUNTERS:
            out[name] = value
    return out


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


_ORDER = ("model", "created_at", "message", "response", "thinking", "done", "done_reason")


def _ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """Keys in Ollama's order (clients do not care; people reading a trace do)."""
    first = {key: obj[key] for key in _ORDER if key in obj}
    return first | {key: value for key, value in obj.items() if key not in first}
