"""The official ``openai`` SDK against a real ``llmserve serve`` process.

The client code is what anyone would write for OpenAI, with only ``base_url`` and ``api_key``
changed (plus ``max_retries=0`` where a test provokes a 429, so the SDK does not retry it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.openai._helpers import log_rows

USER = [{"role": "user", "content": "Why is the sky blue?"}]
TOKENS = ["The ", "sky ", "is ", "blue."]


@pytest.fixture
def server(subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        yield server


def _client(server: ServerProcess, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", **options)


def test_sync_client(server: ServerProcess, ollama: OllamaDouble, db_url: str) -> None:
    client = _client(server)
    assert {m.id for m in client.models.list()} == {"llama3.2:latest", "qwen2.5:0.5b"}
    assert client.models.retrieve("qwen2.5:0.5b").id == "qwen2.5:0.5b"

    ollama.enqueue(Script(tokens=TOKENS, prompt_eval_count=9))
    chat = client.chat.completions.create(model="llama3.2", messages=USER)  # type: ignore[arg-type]
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == "The sky is blue."
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (9, 4)
    assert chat.usage.total_tokens == 13

    ollama.enqueue(Script(tokens=TOKENS))
    stream = client.chat.completions.create(
        model="qwen2.5:0.5b",
        messages=USER,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
        temperature=0.1,
        seed=7,
        stop=["\n\n"],
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The sky is "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert {c.model for c in chunks} == {"qwen2.5:0.5b"}

    ollama.enqueue(Script(tokens=["1, ", "2, ", "3"]), Script(tokens=["4", "5"]))
    completion = client.completions.create(model="llama3.2", prompt="Count:")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "1, 2, 3"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    pieces = client.completions.create(model="llama3.2", prompt="Go on:", stream=True)
    assert "".join(p.choices[0].text for p in pieces) == "45"

    sent = [r.json for r in ollama.requests if r.path == "/api/chat"]
    assert [s["model"] for s in sent] == ["llama3.2", "qwen2.5:0.5b", "llama3.2", "llama3.2"]
    assert sent[1]["options"] == {"temperature": 0.1, "seed": 7, "stop": ["\n\n"], "num_predict": 3}
    rows = log_rows(db_url, 4)
    assert [(r.route, r.model, r.status) for r in rows] == [
        ("/v1/chat/completions", "llama3.2", "ok"),
        ("/v1/chat/completions", "qwen2.5:0.5b", "ok"),
        ("/v1/completions", "llama3.2", "ok"),
        ("/v1/completions", "llama3.2", "ok"),
    ]


def test_async_client(server: ServerProcess, ollama: OllamaDouble) -> None:
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused") as client:
            models = await client.models.list()
            assert "qwen2.5:0.5b" in {m.id async for m in models}

            ollama.enqueue(Script(tokens=TOKENS))
            chat = await client.chat.completions.create(
                model="LLAMA3.2:latest", messages=USER  # type: ignore[arg-type]
            )
            assert chat.choices[0].message.content == "The sky is blue."

            ollama.enqueue(Script(tokens=TOKENS))
            stream = await client.chat.completions.create(
                model="llama3.2",
                messages=USER,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "The sky is blue."
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11

            ollama.enqueue(Script(tokens=["a", "b"]), Script(tokens=["c", "d"]))
            completion = await client.completions.create(model="qwen2.5:0.5b", prompt="x")
            assert completion.choices[0].text == "ab"
            pieces = await client.completions.create(model="qwen2.5:0.5b", prompt="y", stream=True)
            assert "".join([p.choices[0].text async for p in pieces]) == "cd"

            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(
                    model="no-such-model", messages=USER  # type: ignore[arg-type]
                )

    asyncio.run(main())


def test_errors_raise_the_sdk_exceptions(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    env = {**subprocess_env, "MAX_CONCURRENT_GENERATIONS": "1", "MAX_QUEUED_GENERATIONS": "0"}
    with running_server(env, tmp_path, warm=True) as server:
        client = _client(server, max_retries=0)
        with pytest.raises(openai.NotFoundError) as not_found:
            client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        assert not_found.value.code == "model_not_found" and "gpt-4o" in not_found.value.message
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")

        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="llama3.2", messages=USER, n=2)  # type: ignore[arg-type]
        assert bad.value.param == "n" and "'n'" in bad.value.message
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="llama3.2",
                messages=USER,  # type: ignore[arg-type]
                functions=[{"name": "get_weather"}],
            )
        assert bad.value.param == "functions"
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model="llama3.2", prompt="x", temperature=3)
        assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"

        ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2, error="runner stopped"))
        stream = client.chat.completions.create(
            model="llama3.2", messages=USER, stream=True  # type: ignore[arg-type]
        )
        with pytest.raises(openai.APIError, match="runner stopped"):
            for _ in stream:
                pass

        ollama.enqueue(Script(hang=True))
        started = len(ollama.generations)
        holder = threading.Thread(
            target=lambda: _ignore_errors(
                lambda: client.completions.create(model="llama3.2", prompt="x", timeout=1.5)
            )
        )
        holder.start()
        try:
            _wait_for_generations(ollama, started + 1)  # the only slot is taken
            with pytest.raises(openai.RateLimitError) as limited:
                client.completions.create(model="llama3.2", prompt="y")
            assert int(limited.value.response.headers["retry-after"]) > 0
        finally:
            holder.join()


def test_a_client_leaving_mid_stream_cancels_upstream_and_is_logged(
    server: ServerProcess, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(tokens=[f"t{i} " for i in range(200)], delay_s=0.02))
    client = _client(server)
    stream = client.chat.completions.create(
        model="llama3.2", messages=USER, stream=True  # type: ignore[arg-type]
    )
    for received, _ in enumerate(stream, start=1):
        if received == 6:  # the role chunk and five tokens
            break
    stream.close()
    record = ollama.wait_for_cancel(timeout=2.0)
    assert record.cancelled and record.tokens_sent < 200
    (row,) = log_rows(db_url, 1)
    assert (row.route, row.status) == ("/v1/chat/completions", "cancelled")
    assert 5 <= row.completion_tokens < 200


def _ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(openai.OpenAIError):
        call()


def _wait_for_generations(ollama: OllamaDouble, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ollama.generations) < count:
        assert time.monotonic() < deadline, "the generation did not start"
        time.sleep(0.02)
