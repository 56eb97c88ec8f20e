"""``stop_reason: "stop_sequence"`` on ``LLM_BACKEND=openai``, through the official SDKs: llmserve
in front of one, then two (a pool), fake OpenAI-compatible servers that report the stop string
that matched the way vLLM does (``tests/fakes/openai_upstream.py``). The other faces keep their
own words for the same end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.openai_upstream import OpenAIUpstream

MODEL = "vllm-model"
ANSWER = "One, two, three, four."
USER: Any = [{"role": "user", "content": "Count to four."}]


@pytest.fixture(scope="module", params=["one server", "pool"])
def upstreams(request: pytest.FixtureRequest) -> Iterator[list[OpenAIUpstream]]:
    count = 2 if request.param == "pool" else 1
    with (
        OpenAIUpstream.running(model=MODEL, answer=ANSWER) as first,
        OpenAIUpstream.running(model=MODEL, answer=ANSWER) as second,
    ):
        yield [first, second][:count]


@pytest.fixture(scope="module")
def server(
    upstreams: list[OpenAIUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home: Path = tmp_path_factory.mktemp("vllm-stops")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": ", ".join(upstream.base_url for upstream in upstreams),
        "DATABASE_URL": f"sqlite:///{home / 'vllm.db'}",
        "LOG_LEVEL": "WARNING",
    }
    with running_server(env, home, warm=True) as server:
        yield server


@pytest.fixture
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def _sent_stops(upstreams: list[OpenAIUpstream]) -> list[Any]:
    return [body.get("stop") for upstream in upstreams for body in upstream.requests]


def test_the_matched_stop_string_is_the_stop_reason(
    claude: anthropic.Anthropic, upstreams: list[OpenAIUpstream]
) -> None:
    stops = ["nowhere", "three"]
    message = claude.messages.create(
        model=MODEL, max_tokens=32, messages=USER, stop_sequences=stops
    )
    assert message.content[0].type == "text" and message.content[0].text == "One, two, "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "three")

    with claude.messages.stream(
        model=MODEL, max_tokens=32, messages=USER, stop_sequences=stops
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "One, two, "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "three")
    assert _sent_stops(upstreams)[-2:] == [stops, stops]


def test_no_match_is_end_turn_and_the_token_limit_keeps_precedence(
    claude: anthropic.Anthropic,
) -> None:
    whole = claude.messages.create(
        model=MODEL, max_tokens=32, messages=USER, stop_sequences=["nowhere"]
    )
    assert whole.content[0].type == "text" and whole.content[0].text == ANSWER
    assert (whole.stop_reason, whole.stop_sequence) == ("end_turn", None)

    with claude.messages.stream(
        model=MODEL, max_tokens=2, messages=USER, stop_sequences=["three"]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "One, two, "
    assert (final.stop_reason, final.stop_sequence) == ("max_tokens", None)


def test_the_other_faces_keep_their_own_words(server: ServerProcess) -> None:
    oai = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    completion = oai.chat.completions.create(model=MODEL, messages=USER, stop=["three"])
    assert completion.choices[0].message.content == "One, two, "
    assert completion.choices[0].finish_reason == "stop"

    body = {"model": MODEL, "messages": USER, "stream": False, "options": {"stop": ["three"]}}
    native = httpx.post(server.base_url + "/api/chat", json=body, timeout=30).json()
    assert (native["message"]["content"], native["done_reason"]) == ("One, two, ", "stop")
