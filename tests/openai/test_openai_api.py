"""The OpenAI-compatible routes in this process, against the Ollama double: wire format, model
choice, parameters, errors in OpenAI's envelope, request-log rows."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmserve.db.session import make_engine, make_sessions
from llmserve.services.keys import KeyService
from llmserve.settings import Settings
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.openai._helpers import (
    CHAT,
    COMPLETIONS,
    app_client,
    log_rows,
    sent_to_ollama,
    sse_json,
    tags_requests,
)

USER = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings) as client:
        yield client


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


# -- success ---------------------------------------------------------------------------------


def test_chat_completion_is_a_chat_completion_object(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["The ", "sky ", "is ", "blue."], prompt_eval_count=9))
    response = client.post(CHAT, json={"model": "llama3.2", "messages": USER})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-") + 8
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "llama3.2"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The sky is blue.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_chat_stream_has_role_content_finish_and_done(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", '"b"\n', "é🙂"]))
    response = client.post(CHAT, json={"model": "llama3.2", "messages": USER, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = sse_json(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["delta"]["content"] for c in choices[1:-1]] == ["a", '"b"\n', "é🙂"]
    assert all(c["finish_reason"] is None for c in choices[:-1])
    assert choices[-1] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert response.text.endswith("data: [DONE]\n\n")


def test_include_usage_adds_a_usage_chunk_before_done(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["x", "y"], prompt_eval_count=5))
    response = client.post(
        CHAT,
        json={
            "model": "llama3.2",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    *chunks, usage, done = sse_json(response.text)
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks)
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert usage["id"] == chunks[0]["id"]


def test_text_completion_whole_and_streamed(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.enqueue(Script(tokens=["one", " two"]), Script(tokens=["one", " two"]))
    body = client.post(COMPLETIONS, json={"model": "llama3.2", "prompt": "Count:"}).json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "one two", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"]["completion_tokens"] == 2
    response = client.post(
        COMPLETIONS,
        json={
            "model": "llama3.2",
            "prompt": "Count:",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    *chunks, usage, done = sse_json(response.text)
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert [c["choices"][0]["text"] for c in chunks] == ["one", " two", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 9
    assert sent_to_ollama(ollama)[-1]["messages"] == [{"role": "user", "content": "Count:"}]


def test_max_tokens_gives_finish_reason_length_and_reaches_ollama(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c", "d"]))
    body = client.post(
        CHAT,
        json={
            "model": "llama3.2",
            "messages": USER,
            "max_completion_tokens": 2,
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 42,
            "stop": "###",
            "user": "someone",
            "n": 1,
            "frequency_penalty": 0,
            "logit_bias": {},  # empty: nothing to honour
        },
    ).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "ab"
    sent = sent_to_ollama(ollama)[-1]
    assert sent["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["###"],
        "num_predict": 2,
        "frequency_penalty": 0,
    }


def test_the_conversation_reaches_ollama_turn_by_turn(
    client: TestClient, ollama: OllamaDouble
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Colour of the sky?"},
    ]
    client.post(CHAT, json={"model": "llama3.2", "messages": messages})
    sent = sent_to_ollama(ollama)[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Colour of the sky?"},
    ]


# -- the model -------------------------------------------------------------------------------


def test_models_lists_installed_models(client: TestClient, ollama: OllamaDouble) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert {m["id"] for m in body["data"]} == {"llama3.2:latest", "qwen2.5:0.5b"}
    assert all(m["object"] == "model" and m["created"] > 0 for m in body["data"])
    assert client.get("/v1/models/LLAMA3.2").json()["id"] == "llama3.2:latest"
    assert _error(client.get("/v1/models/nope:1b"), 404)["type"] == "not_found_error"


def test_the_requested_model_runs_while_the_native_route_keeps_the_active_one(
    client: TestClient, ollama: OllamaDouble
) -> None:
    body = client.post(CHAT, json={"model": "Qwen2.5:0.5B", "messages": USER}).json()
    assert body["model"] == "qwen2.5:0.5b"
    assert sent_to_ollama(ollama)[-1]["model"] == "qwen2.5:0.5b"
    client.post("/api/v1/generate", json={"prompt": "hi"})
    assert sent_to_ollama(ollama)[-1]["model"] == "llama3.2"
    client.post(COMPLETIONS, json={"model": "llama3.2:latest", "prompt": "hi"})
    assert sent_to_ollama(ollama)[-1]["model"] == "llama3.2"  # the active model, by any name


def test_the_installed_list_is_cached_between_requests(
    client: TestClient, ollama: OllamaDouble
) -> None:
    before = tags_requests(ollama)
    for _ in range(3):
        assert (
            client.post(CHAT, json={"model": "qwen2.5:0.5b", "messages": USER}).status_code == 200
        )
    assert tags_requests(ollama) - before == 1
    client.post(CHAT, json={"model": "llama3.2", "messages": USER})  # the active one: no look-up
    assert tags_requests(ollama) - before == 1


def test_a_model_installed_a_moment_ago_is_found(client: TestClient, ollama: OllamaDouble) -> None:
    client.post(CHAT, json={"model": "qwen2.5:0.5b", "messages": USER})  # fills the cache
    ollama.add_model("mistral:7b")
    response = client.post(CHAT, json={"model": "mistral:7b", "messages": USER})
    assert response.status_code == 200
    assert sent_to_ollama(ollama)[-1]["model"] == "mistral:7b"


def test_unknown_model_is_404_and_never_generates(client: TestClient, ollama: OllamaDouble) -> None:
    for url, body in ((CHAT, {"messages": USER}), (COMPLETIONS, {"prompt": "x"})):
        for stream in (False, True):
            response = client.post(url, json={"model": "gpt-4o", "stream": stream, **body})
            error = _error(response, 404)
            assert error["type"] == "not_found_error"
            assert error["code"] == "model_not_found"
            assert "gpt-4o" in error["message"]
    assert not sent_to_ollama(ollama)


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_unsupported_chat_parameters_are_400_naming_them(
    client: TestClient, ollama: OllamaDouble, extra: dict[str, Any], param: str
) -> None:
    response = client.post(CHAT, json={"model": "llama3.2", "messages": USER, **extra})
    error = _error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"
    assert f"'{param}'" in error["message"]
    assert not sent_to_ollama(ollama)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"best_of": 3}, "best_of"),
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 5}, "logprobs"),
        ({"n": 3}, "n"),
        ({"prompt": ["a", "b"]}, "prompt"),
    ],
)
def test_unsupported_completion_parameters_are_400_naming_them(
    client: TestClient, extra: dict[str, Any], param: str
) -> None:
    response = client.post(COMPLETIONS, json={"model": "llama3.2", "prompt": "x", **extra})
    error = _error(response, 400)
    assert error["param"] == param and f"'{param}'" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "llama3.2"}, "messages"),
        ({"model": "llama3.2", "messages": []}, "messages"),
        ({"model": "llama3.2", "messages": [{"role": "system", "content": "x"}]}, "messages"),
        (
            {"model": "llama3.2", "messages": [{"role": "robot", "content": "x"}]},
            "messages.[0].role",
        ),
        ({"model": "llama3.2", "messages": [{"role": "tool", "content": "x"}]}, "messages.[0]"),
        (
            {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "messages.[0].content",
        ),
        (
            {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": [{"type": "input_audio"}]}],
            },
            "messages.[0].content",
        ),
        (
            {
                "model": "llama3.2",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ],
            },
            "messages.[0].content",
        ),
        ({"model": "llama3.2", "messages": USER, "tool_choice": "required"}, "tool_choice"),
        (
            {
                "model": "llama3.2",
                "messages": USER,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        (
            {"model": "llama3.2", "messages": USER, "response_format": {"type": "json_schema"}},
            "response_format",
        ),
        (
            {"model": "llama3.2", "messages": USER, "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
        ({"model": "llama3.2", "messages": USER, "temperature": 2.5}, "temperature"),
        ({"model": "llama3.2", "messages": USER, "top_p": 0}, "top_p"),
        ({"model": "llama3.2", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "llama3.2", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "llama3.2", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "llama3.2", "messages": USER, "seed": "x"}, "seed"),
    ],
)
def test_invalid_requests_are_400_in_openai_envelope(
    client: TestClient, ollama: OllamaDouble, body: dict[str, Any], param: str
) -> None:
    error = _error(client.post(CHAT, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[0] in error["message"]
    assert not sent_to_ollama(ollama)


def test_malformed_json_is_400_in_openai_envelope(client: TestClient) -> None:
    response = client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert "could not parse the JSON" in _error(response, 400)["message"]


def test_the_native_routes_keep_their_own_error_formats(client: TestClient) -> None:
    assert client.post("/api/v1/generate", json={}).status_code == 422
    assert "detail" in client.post("/api/v1/generate", json={}).json()


# -- failures --------------------------------------------------------------------------------


def test_prompt_over_the_limit_is_413(settings: Settings) -> None:
    with app_client(settings, MAX_PROMPT_CHARS=10) as client:
        error = _error(
            client.post(COMPLETIONS, json={"model": "llama3.2", "prompt": "x" * 11}), 413
        )
        assert error["type"] == "invalid_request_error" and error["code"] == "prompt_too_large"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stream", [False, True])
def test_backend_down_is_503_with_retry_after(settings: Settings, stream: bool) -> None:
    with app_client(settings, OLLAMA_BASE_URL=f"http://127.0.0.1:{_closed_port()}") as client:
        response = client.post(CHAT, json={"model": "llama3.2", "messages": USER, "stream": stream})
        error = _error(response, 503)
        assert error["type"] == "api_error" and error["code"] == "backend_unavailable"
        assert int(response.headers["retry-after"]) > 0
        assert _error(client.get("/v1/models"), 503)["code"] == "backend_unavailable"


def test_backend_error_is_502_and_slow_first_token_is_504(
    settings: Settings, ollama: OllamaDouble
) -> None:
    with app_client(settings, FIRST_TOKEN_TIMEOUT_S=0.3) as client:
        ollama.enqueue(Script(status=500, error="llama runner crashed"))
        error = _error(client.post(CHAT, json={"model": "llama3.2", "messages": USER}), 502)
        assert error["type"] == "api_error" and "llama runner crashed" in error["message"]
        ollama.enqueue(Script(first_token_delay_s=3))
        response = client.post(
            COMPLETIONS, json={"model": "llama3.2", "prompt": "x", "stream": True}
        )
        assert _error(response, 504)["code"] == "backend_timeout"


def test_error_mid_stream_is_a_final_error_event_without_done(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c", "d"], error_after=2, error="runner stopped"))
    response = client.post(CHAT, json={"model": "llama3.2", "messages": USER, "stream": True})
    assert response.status_code == 200
    events = sse_json(response.text)
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["a", "b"]
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "runner stopped" in error["message"]
    assert error["type"] == "api_error" and error["code"] == "backend_stream_error"


# -- the request log -------------------------------------------------------------------------


def test_log_rows_carry_the_openai_route_names_and_the_model(
    settings: Settings, db_url: str, ollama: OllamaDouble
) -> None:
    with app_client(settings) as client:
        client.post(CHAT, json={"model": "qwen2.5:0.5b", "messages": USER})
        client.post(CHAT, json={"model": "llama3.2", "messages": USER, "stream": True})
        client.post(COMPLETIONS, json={"model": "llama3.2", "prompt": "x"})
        client.post(CHAT, json={"model": "gpt-4o", "messages": USER})  # 404: no generation
    rows = log_rows(db_url, 3)
    assert [(r.route, r.model, r.status) for r in rows] == [
        ("/v1/chat/completions", "qwen2.5:0.5b", "ok"),
        ("/v1/chat/completions", "llama3.2", "ok"),
        ("/v1/completions", "llama3.2", "ok"),
    ]
    assert all(r.completion_tokens == 4 and r.prompt_tokens == 7 for r in rows)


def test_with_auth_on_a_plain_key_generates_and_its_id_is_logged(
    settings: Settings, db_url: str, ollama: OllamaDouble
) -> None:
    engine = make_engine(db_url)
    try:
        key, record = KeyService(make_sessions(engine)).create("sdk", actor="test")
    finally:
        engine.dispose()
    with app_client(settings, AUTH_REQUIRED=True) as client:
        error = _error(client.post(CHAT, json={"model": "llama3.2", "messages": USER}), 401)
        assert error["code"] == "invalid_api_key"
        ok = client.post(
            CHAT,
            json={"model": "llama3.2", "messages": USER},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert ok.status_code == 200
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).is_success
    (row,) = log_rows(db_url, 1)
    assert (row.route, row.api_key_id) == ("/v1/chat/completions", record.id)


def test_an_oversized_body_is_413_in_openai_envelope(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/v1/completions",  # chat completions also make room for an image (MAX_IMAGE_BYTES)
        content=b"x" * 3_000_000,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
