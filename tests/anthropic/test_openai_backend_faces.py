"""Both new faces on ``LLM_BACKEND=openai``: llmserve in front of llama-cpp-python's own
OpenAI-compatible server (the real 270M model), through the official SDKs. That server reports
no usage, so ``count_tokens`` is a 400 there: llmserve never guesses a count."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests._server import ServerProcess, running_server
from tests.backends.test_openai_backend import ALIAS, API_KEY, server_url  # noqa: F401

pytestmark = pytest.mark.embedded

USER: Any = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(
    server_url: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("openai-faces")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": server_url,
        "OPENAI_API_KEY": API_KEY,
        "DATABASE_URL": f"sqlite:///{home / 'openai.db'}",
        "LOG_LEVEL": "WARNING",
    }
    with running_server(env, home) as server:
        yield server


def test_messages_through_an_openai_compatible_engine(server: ServerProcess) -> None:
    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    message = client.messages.create(model=ALIAS, max_tokens=8, messages=USER, timeout=120)
    assert message.content[0].type == "text" and message.content[0].text.strip()
    with client.messages.stream(model=ALIAS, max_tokens=8, messages=USER, timeout=120) as stream:
        assert "".join(stream.text_stream).strip()
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.count_tokens(model=ALIAS, messages=USER)
    assert "token count" in refused.value.body["error"]["message"]  # type: ignore[index]


def test_a_stop_sequence_through_llama_cpp_server_reads_as_end_turn(
    server: ServerProcess,
) -> None:
    # That server cuts the answer before the stop string but says only finish_reason "stop"
    # (no vLLM-style stop_reason), so which string matched is not known: end_turn, null.
    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    count: Any = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    asked: Any = {"model": ALIAS, "max_tokens": 40, "messages": count, "timeout": 120}
    free = client.messages.create(**asked, extra_body={"temperature": 0})
    assert free.content[0].type == "text" and "integer" in free.content[0].text
    message = client.messages.create(
        **asked, stop_sequences=["integer"], extra_body={"temperature": 0}
    )
    block = message.content[0]
    assert block.type == "text" and free.content[0].text.startswith(block.text + "integer")
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


def test_responses_through_an_openai_compatible_engine(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    response = client.responses.create(model=ALIAS, input="Name a colour.", max_output_tokens=8)
    assert response.output_text.strip()
    with client.responses.stream(model=ALIAS, input="Name a colour.", max_output_tokens=8) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
    assert "".join(deltas).strip()
