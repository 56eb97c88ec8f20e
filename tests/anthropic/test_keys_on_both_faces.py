"""API keys and key policy on ``/v1/messages`` and ``/v1/responses``, through the official SDKs:
``x-api-key`` or Bearer, and 401 / 403 / 429 in each API's own shape, as the SDKs' exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests._server import ServerProcess, running_server
from tests.e2e._cli import run
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import server_env

USER: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def keyed(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server with AUTH_REQUIRED=true and three keys: ``free``, ``qwen`` (qwen* models only)
    and ``slow`` (one request a minute)."""
    env = server_env(database_url, ollama_server.base_url, AUTH_REQUIRED="true")
    cwd = tmp_path_factory.mktemp("keys")
    keys = {}
    for name, *limits in (["free"], ["qwen", "--models", "qwen*"], ["slow", "--rpm", "1"]):
        name = f"{name}-{cwd.name}"
        made = run(["keys", "create", name, *limits], env, cwd)
        assert made.returncode == 0, made.stderr
        keys[name.split("-")[0]] = made.stdout.strip()
    with running_server(env, cwd) as server:
        yield server, keys


def _anthropic(server: ServerProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0)


def test_x_api_key_and_bearer_both_authenticate(
    keyed: tuple[ServerProcess, dict[str, str]], ollama: OllamaDouble
) -> None:
    server, keys = keyed
    ollama.enqueue(Script(tokens=["ok"]))
    message = _anthropic(server, keys["free"]).messages.create(
        model="llama3.2", max_tokens=8, messages=USER
    )  # the SDK sends x-api-key
    assert message.content[0].type == "text" and message.content[0].text == "ok"
    ollama.enqueue(Script(tokens=["ok"]))
    bearer = anthropic.Anthropic(
        base_url=server.base_url, auth_token=keys["free"], max_retries=0
    ).messages.create(model="llama3.2", max_tokens=8, messages=USER)
    assert bearer.content[0].type == "text"


def test_a_missing_or_wrong_key_is_a_401(
    keyed: tuple[ServerProcess, dict[str, str]], ollama: OllamaDouble
) -> None:
    server, _ = keyed
    with pytest.raises(anthropic.AuthenticationError) as refused:
        _anthropic(server, "sk-wrong").messages.create(
            model="llama3.2", max_tokens=8, messages=USER
        )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    response = httpx.post(
        server.base_url + "/v1/messages/count_tokens",
        json={"model": "llama3.2", "messages": USER},
    )
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="sk-wrong").responses.create(
            model="llama3.2", input="hi"
        )
    assert not ollama.generations


def test_a_model_outside_the_keys_list_is_a_403(
    keyed: tuple[ServerProcess, dict[str, str]], ollama: OllamaDouble
) -> None:
    server, keys = keyed
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        _anthropic(server, keys["qwen"]).messages.create(
            model="llama3.2", max_tokens=8, messages=USER
        )
    assert refused.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=keys["qwen"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.responses.create(model="llama3.2", input="hi")
    assert denied.value.code == "model_not_allowed"
    assert not ollama.generations
    ollama.enqueue(Script(tokens=["ok"]))
    assert client.responses.create(model="qwen2.5:0.5b", input="hi").output_text == "ok"


def test_requests_over_the_keys_rpm_are_a_429(
    keyed: tuple[ServerProcess, dict[str, str]], ollama: OllamaDouble
) -> None:
    """Three requests within a second span at most two calendar minutes: one is refused."""
    server, keys = keyed
    client = _anthropic(server, keys["slow"])
    refusals = []
    for _ in range(3):
        ollama.enqueue(Script(tokens=["ok"]))
        try:
            client.messages.create(model="llama3.2", max_tokens=8, messages=USER)
        except anthropic.RateLimitError as exc:
            refusals.append(exc)
    assert refusals
    refused = refusals[0]
    assert refused.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(refused.response.headers["retry-after"]) >= 1
