"""The generate request schema is strict, as SPEC §3 says."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmserve.api.schemas import GenerateRequest


def test_minimal_request_and_defaults() -> None:
    request = GenerateRequest.model_validate({"prompt": "hi"})
    assert request.stream is False
    domain = request.to_domain()
    assert domain.prompt == "hi"
    assert domain.options.stop == ()


def test_options_map_to_the_domain() -> None:
    request = GenerateRequest.model_validate(
        {
            "prompt": "hi",
            "system": "be brief",
            "options": {
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "seed": 7,
                "stop": "END",
                "max_tokens": 5,
            },
        }
    )
    options = request.to_domain().options
    assert (options.temperature, options.top_p, options.top_k) == (0.2, 0.9, 40)
    assert (options.seed, options.stop, options.max_tokens) == (7, ("END",), 5)
    assert request.to_domain().system == "be brief"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "   \n\t"},
        {"prompt": 5},
        {"prompt": None},
        {"prompt": "hi", "stream": "yes"},
        {"prompt": "hi", "stream": 1},
        {"prompt": "hi", "steam": True},
        {"prompt": "hi", "model": "other"},
        {"prompt": "hi", "options": {"temperature": 2.5}},
        {"prompt": "hi", "options": {"temperature": -0.1}},
        {"prompt": "hi", "options": {"top_p": 0}},
        {"prompt": "hi", "options": {"top_p": 1.5}},
        {"prompt": "hi", "options": {"top_k": -1}},
        {"prompt": "hi", "options": {"seed": 1.5}},
        {"prompt": "hi", "options": {"max_tokens": 0}},
        {"prompt": "hi", "options": {"stop": ["a"] * 9}},
        {"prompt": "hi", "options": {"num_ctx": 4096}},
    ],
)
def test_invalid_bodies_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(body)
