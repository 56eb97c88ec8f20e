"""``api/sse.py``: what an SSE response sends, message by message (ASGI), for each way it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from llmserve import errors
from llmserve.api.sse import END, EventStream, Final, error_event, generation_events, token_event
from llmserve.domain import GenerationRequest, GenerationResult


class _Generation:
    """What ``generation_events`` uses of a Generation: ``batches()``, ``result``, ``aclose()``.

    ``result_with_last``: the backend knows the output is complete when its last batch arrives
    (Ollama's final line comes with the last token); otherwise only after the batches end.
    """

    def __init__(
        self, batches: list[list[str]], *, result_with_last: bool, fail: Exception | None = None
    ) -> None:
        self._batches = batches
        self._result_with_last = result_with_last
        self._fail = fail
        self.result: GenerationResult | None = None
        self.request = GenerationRequest.from_prompt("x")
        self.closed = False

    async def batches(self) -> AsyncIterator[list[str]]:
        for i, batch in enumerate(self._batches):
            if self._result_with_last and i == len(self._batches) - 1 and self._fail is None:
                self.result = GenerationResult()
            yield batch
        if self._fail is not None:
            raise self._fail
        self.result = GenerationResult()

    async def aclose(self) -> None:
        self.closed = True


async def _collect(generation: _Generation) -> list[bytes]:
    chunks = []
    async for chunk in generation_events(generation):  # type: ignore[arg-type]
        # Closed (slot freed, row logged) exactly when the last chunk is handed over.
        assert generation.closed == (type(chunk) is Final)
        chunks.append(chunk)
    return chunks


def test_the_batch_that_completes_the_output_goes_out_with_the_end() -> None:
    generation = _Generation([["a"], ["b", "c"]], result_with_last=True)
    chunks = asyncio.run(_collect(generation))
    assert chunks == [token_event("a"), token_event("b") + token_event("c") + END]
    assert [type(chunk) for chunk in chunks] == [bytes, Final]
    assert generation.closed


def test_when_the_end_is_known_only_afterwards_the_end_is_its_own_final_chunk() -> None:
    generation = _Generation([["a"], ["b"]], result_with_last=False)
    chunks = asyncio.run(_collect(generation))
    assert chunks == [token_event("a"), token_event("b"), END]
    assert type(chunks[-1]) is Final


def test_an_error_after_some_text_is_the_final_chunk() -> None:
    failure = errors.BackendStreamError("Ollama failed mid-generation: boom")
    generation = _Generation([["a"]], result_with_last=False, fail=failure)
    chunks = asyncio.run(_collect(generation))
    assert chunks == [token_event("a"), error_event(failure)]
    assert type(chunks[-1]) is Final and generation.closed


async def _send_all(chunks: list[bytes]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await EventStream(source(), ping_interval=60)({"type": "http"}, receive, send)
    return sent


def _bodies(messages: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
    return [(m["body"], m.get("more_body", False)) for m in messages[1:]]


def test_a_whole_stream_at_once_is_the_start_and_one_body_message() -> None:
    messages = asyncio.run(_send_all([Final(token_event("a") + END)]))
    assert _bodies(messages) == [(token_event("a") + END, False)]


def test_chunks_then_a_final_one_end_with_it() -> None:
    messages = asyncio.run(_send_all([token_event("a"), token_event("b"), Final(END)]))
    assert _bodies(messages) == [(token_event("a"), True), (token_event("b"), True), (END, False)]


def test_a_stream_without_a_final_chunk_ends_with_an_empty_message() -> None:
    messages = asyncio.run(_send_all([b"data: 1\n\n", b"data: 2\n\n"]))
    assert _bodies(messages) == [(b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"", False)]
    assert _bodies(asyncio.run(_send_all([]))) == [(b"", False)]


def test_pings_go_out_while_nothing_else_does_and_stop_with_the_stream() -> None:
    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def slow() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await asyncio.sleep(0.35)  # three ping intervals with nothing to send
            yield Final(b"data: 2\n\n")

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await EventStream(slow(), ping_interval=0.1)({"type": "http"}, receive, send)
        await asyncio.sleep(0.25)  # no timer may fire after the end
        return sent

    bodies = _bodies(asyncio.run(run()))
    assert bodies[0] == (b"data: 1\n\n", True) and bodies[-1] == (b"data: 2\n\n", False)
    pings = bodies[1:-1]
    assert 1 <= len(pings) <= 4 and set(pings) == {(b": ping\n\n", True)}
