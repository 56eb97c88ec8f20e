"""One streamed ``/v1/chat/completions`` response, read as server-sent events.

``data: {chunk}`` lines carry ``choices[0].delta.content`` fragments and ``delta.tool_calls``
deltas (``index``, then ``id`` and ``function.name`` once, ``function.arguments`` fragments),
then a chunk with
``finish_reason``, then (with ``stream_options.include_usage``) one with ``usage``, then
``data: [DONE]``. Each read waits at most until the first-token deadline (before the first
fragment) or the idle timeout (after it); a per-read ``asyncio.timeout`` is used rather than
one around the whole iteration because the iteration may be driven from another task than the
one that opened the stream.

Servers such as vLLM put ``stop_reason`` beside ``finish_reason: "stop"``: the stop string that
matched (a string), or a stop token's id (an int). It becomes the result's ``stop_sequence``
only when it is one of the request's stop strings. Servers that say no more than
``finish_reason`` (llama-cpp-python's) leave it None.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from llmserve import errors
from llmserve.backends._tools import ToolCallAssembler, finished
from llmserve.backends.base import PrefetchingStream
from llmserve.domain import GenerationResult, StreamEvent, ToolCallDelta, Usage

_WHERE = "the OpenAI-compatible server"


class OpenAIStream(PrefetchingStream):
    """Text fragments of one streamed chat completion (see ``backends/base.py``)."""

    def __init__(
        self,
        response: httpx.Response,
        base_url: str,
        first_token_deadline: float,
        idle_timeout_s: float,
        stops: tuple[str, ...] = (),
    ) -> None:
        self._response = response
        self._lines = response.aiter_lines()
        self._where = f"{_WHERE} at {base_url}"
        self._first_token_deadline = first_token_deadline
        self._idle_timeout_s = idle_timeout_s
        self._finished = False
        self._finish_reason: str | None = None
        self._stops = stops
        self._stop_sequence: str | None = None
        self._usage: Usage | None = None
        self.result: GenerationResult | None = None
        self.tokens_received = 0
        self._calls = ToolCallAssembler()

    async def _pieces(self) -> AsyncIterator[StreamEvent]:
        while not self._finished:
            line = await self._next_line()
            if line is None:
                break
            if not line.startswith("data:"):
                continue  # blank separators, ": comments", "event:" and "id:" fields
            data = line[5:].strip()
            if data == "[DONE]":
                self._finish()
                return
            chunk = self._parse(data)
            if usage := chunk.get("usage"):
                self._usage = Usage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
            choices = chunk.get("choices") or []
            if not choices:
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
                matched = choice.get("stop_reason")
                if isinstance(matched, str) and matched in self._stops:
                    self._stop_sequence = matched
            if text:
                self.tokens_received += 1
                yield text
            for call in delta.get("tool_calls") or ():
                event = self._tool_call_delta(call)
                self._calls.add(event)
                self.tokens_received += 1
                yield event
        if self._finished:
            return
        if self._finish_reason is not None:  # the server left out [DONE]: the answer is whole
            self._finish()
            return
        raise self._failure("closed the stream before the generation finished")

    async def _next_line(self) -> str | None:
        loop = asyncio.get_running_loop()
        started = self.tokens_received > 0
        deadline = loop.time() + self._idle_timeout_s if started else self._first_token_deadline
        try:
            async with asyncio.timeout_at(deadline):
                return await self._lines.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            phase = "the next token" if started else "the first token"
            raise errors.BackendTimeoutError(
                f"{self._where} timed out waiting for {phase}"
            ) from None
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.TimeoutException):
                raise errors.BackendTimeoutError(f"{self._where} timed out mid-stream") from None
            raise self._failure(f"broke the connection mid-stream: {exc!r}") from None

    def _parse(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise self._failure("sent a malformed event") from None
        if not isinstance(chunk, dict):
            raise self._failure("sent an unexpected event")
        if "error" in chunk or chunk.get("object") == "error":
            message = error_message(data.encode()) or "unknown error"
            raise self._failure(f"failed mid-generation: {message}")
        return chunk

    def _tool_call_delta(self, call: Any) -> ToolCallDelta:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("index", 0), int):
            raise self._failure("sent a malformed tool call delta")
        return ToolCallDelta(
            int(call.get("index", 0)),
            call.get("id") or None,
            function.get("name") or None,
            function.get("arguments") or "",
        )

    def _failure(self, what: str) -> errors.BackendStreamError:
        return errors.BackendStreamError(f"{self._where} {what}")

    def _finish(self) -> None:
        self._finished = True
        calls = self._calls.calls() if self._calls else []
        self.result = finished(
            self._finish_reason or "stop", self._usage or Usage(), calls, self._stop_sequence
        )

    async def aclose(self) -> None:
        # Closing the response closes the connection: that is what makes the server stop.
        await self._response.aclose()


def error_message(raw: bytes) -> str:
    """The human message of an error body: OpenAI's envelope, FastAPI's ``detail``, or text."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, payload.get("message"), payload.get("detail")):
            if isinstance(value, str) and value:
                return value
    return raw.decode("utf-8", "replace").strip()
