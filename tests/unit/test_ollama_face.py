"""Reading Ollama's request bodies, writing its timestamps, and what the other backends do with
what only Ollama has."""

from __future__ import annotations

import re
from typing import Any

import pytest

from llmserve import errors
from llmserve.api.ollama_schemas import (
    OllamaChatRequest,
    OllamaGenerateRequest,
    parse_body,
)
from llmserve.api.ollama_wire import timestamp
from llmserve.backends._ollama_only import refuse_ollama_only
from llmserve.domain import GenerationRequest, Message


def chat(**fields: Any) -> OllamaChatRequest:
    import json

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_body(json.dumps(body).encode(), OllamaChatRequest)


def test_timestamps_are_rfc3339_utc_with_nanoseconds_and_no_trailing_zeros() -> None:
    assert timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert timestamp(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert timestamp(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", timestamp())


def test_known_options_become_fields_and_the_rest_is_kept_as_sent() -> None:
    request = chat(options={"temperature": 1, "num_ctx": 8, "min_p": 0.1, "num_predict": -1})
    domain = request.to_domain(1000)
    assert domain.options.temperature == 1 and domain.options.num_ctx == 8
    assert domain.options.max_tokens is None
    assert domain.options.extra == {"min_p": 0.1, "num_predict": -1}


@pytest.mark.parametrize(
    ("value", "unloads"),
    [(0, True), ("0", True), ("0s", True), ("0m", True), (0.0, True), ("5m", False), (-1, False)],
)
def test_keep_alive_zero_in_any_spelling_unloads(value: object, unloads: bool) -> None:
    assert chat(keep_alive=value).unloads is unloads


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"keep_alive": "300"}, 'time: missing unit in duration "300"'),
        ({"keep_alive": "soon"}, 'time: invalid duration "soon"'),
        ({"think": "maximum"}, "think"),
        ({"format": "yaml"}, "invalid format"),
        ({"format": {"type": 3}}, "not a valid JSON Schema"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
        ({"messages": [{"role": "user", "content": ["a"]}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "images": ["not base64!"]}]}, "base64"),
    ],
)
def test_bad_fields_are_one_400_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidRequestError, match=re.escape(message)):
        chat(**fields).to_domain(1000)


def test_generate_keeps_ollamas_own_fields_for_ollama() -> None:
    body = b'{"model":"m","prompt":"p","raw":false,"suffix":"s","context":[1,2],"think":"low"}'
    domain = parse_body(body, OllamaGenerateRequest).to_domain(1000)
    assert domain.ollama is not None and domain.ollama.endpoint == "generate"
    assert domain.ollama.fields == {
        "think": "low",
        "suffix": "s",
        "context": [1, 2],
        "raw": False,
    }


@pytest.mark.parametrize("extra", ['"system":"s"', '"template":"t"', '"context":[1]'])
def test_raw_mode_refuses_a_template_a_system_prompt_or_a_context(extra: str) -> None:
    body = f'{{"model":"m","prompt":"p","raw":true,{extra}}}'.encode()
    with pytest.raises(errors.InvalidRequestError, match="raw mode does not support"):
        parse_body(body, OllamaGenerateRequest)
    empty = b'{"model":"m","prompt":"p","raw":true,"system":"","template":"","context":[]}'
    assert parse_body(empty, OllamaGenerateRequest).raw is True


def test_an_image_that_is_not_base64_is_refused_even_when_the_request_only_loads() -> None:
    with pytest.raises(errors.InvalidRequestError, match="not valid base64"):
        parse_body(b'{"model":"m","images":["\\u0084"]}', OllamaGenerateRequest)


@pytest.mark.parametrize(
    "request_",
    [
        chat(think=True).to_domain(1000),
        chat(think="low").to_domain(1000),
        chat(logprobs=True).to_domain(1000),
        chat(options={"mirostat": 2}).to_domain(1000),
    ],
)
def test_other_backends_refuse_what_would_change_the_answer(request_: GenerationRequest) -> None:
    with pytest.raises(errors.UnsupportedError, match="only Ollama has it"):
        refuse_ollama_only(request_, "m", "embedded")


@pytest.mark.parametrize(
    "request_",
    [
        chat(think=False, truncate=True, shift=True, logprobs=False).to_domain(1000),
        chat(options={"num_thread": 4, "num_gpu": 0, "use_mmap": False}).to_domain(1000),
        GenerationRequest((Message("user", "hi"),)),
    ],
)
def test_neutral_fields_and_runner_options_pass(request_: GenerationRequest) -> None:
    refuse_ollama_only(request_, "m", "openai")
