"""OpenAI's wire format: chunk bytes, finish reasons and the error envelope (``openai_wire``)."""

from __future__ import annotations

import json

import pytest

from llmserve import errors
from llmserve.api.errors import status_for
from llmserve.api.openai_wire import (
    DONE,
    ChatChunks,
    CompletionChunks,
    error_body,
    error_event,
    error_response,
    finish_reason,
    param_of,
)
from llmserve.domain import GenerationResult, Usage

TRICKY = ["plain", '"quoted"', "back\\slash", "line\nbreak", "é✓🙂", "</script>", "\x00", ""]


def _event(data: bytes) -> object:
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    return json.loads(data[len(b"data: ") : -2])


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_are_openai_chunks(include_usage: bool) -> None:
    chunks = ChatChunks("chatcmpl-1", 1700000000, 'od"d:latest', include_usage=include_usage)
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    base["model"] = 'od"d:latest'
    extra = {"usage": None} if include_usage else {}

    def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    assert _event(chunks.start()) == {
        **base,
        "choices": [choice({"role": "assistant", "content": ""})],
        **extra,
    }
    for text in TRICKY:
        assert _event(chunks.text(text)) == {
            **base,
            "choices": [choice({"content": text})],
            **extra,
        }
    assert _event(chunks.finish("length")) == {**base, "choices": [choice({}, "length")], **extra}
    assert _event(chunks.usage(Usage(3, 4))) == {
        **base,
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def test_completion_chunks_are_text_completion_objects() -> None:
    chunks = CompletionChunks("cmpl-1", 1, "m", include_usage=False)
    assert chunks.start() is None
    for text in TRICKY:
        assert _event(chunks.text(text)) == {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": None}],
        }
    finish = _event(chunks.finish("stop"))
    assert finish["choices"] == [  # type: ignore[index]
        {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("done_reason", "expected"),
    [("stop", "stop"), ("length", "length"), ("unload", "stop"), (None, "stop")],
)
def test_finish_reason(done_reason: str | None, expected: str) -> None:
    result = None if done_reason is None else GenerationResult(done_reason=done_reason)
    assert finish_reason(result) == expected


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "model"), "model"),
        (("body", "messages", 0, "content"), "messages.[0].content"),
        (("body", "stop", 2), "stop.[2]"),
        (("body",), None),
        ((), None),
    ],
)
def test_param_is_spelled_like_openai(loc: tuple[str | int, ...], param: str | None) -> None:
    assert param_of(loc) == param


@pytest.mark.parametrize("error_type", errors.all_error_types(), ids=lambda t: t.__name__)
def test_every_error_type_has_an_envelope_with_its_status(
    error_type: type[errors.LlmserveError],
) -> None:
    error = error_type("something failed")
    response = error_response(error)
    assert response.status_code == status_for(error)
    body = json.loads(response.body)
    assert body == error_body(error)
    assert body["error"] == {
        "message": "something failed",
        "type": error_type.openai_type,
        "param": None,
        "code": error_type.openai_code or error_type.code,
    }
    assert _event(error_event(error)) == body


def test_retry_after_and_www_authenticate_headers() -> None:
    assert (
        error_response(errors.OverloadedError("full", retry_after=3)).headers["retry-after"] == "3"
    )
    assert "retry-after" in error_response(errors.BackendUnavailableError("down")).headers
    assert (
        "bearer"
        in error_response(errors.AuthenticationError("no")).headers["www-authenticate"].lower()
    )
