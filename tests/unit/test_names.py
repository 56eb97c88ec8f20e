"""Ollama's model-name rules."""

from __future__ import annotations

import pytest

from llmserve.errors import InvalidModelNameError
from llmserve.names import parse, same_model


@pytest.mark.parametrize(
    ("name", "display"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("library/llama3.2:1b", "llama3.2:1b"),
        ("registry.ollama.ai/library/llama3.2", "llama3.2:latest"),
        ("myns/m:v1", "myns/m:v1"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M"),
        ("example.com:5000/ns/m:v1", "example.com:5000/ns/m:v1"),
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("_private", "_private:latest"),
        ("https://example.com/ns/m:v1", "example.com/ns/m:v1"),
    ],
)
def test_valid_names(name: str, display: str) -> None:
    assert parse(name).display == display


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "..",
        "%2e%2e",
        "a b",
        "a\x00b",
        "m:",
        "/m",
        "a//b",
        "a/b/c/d",
        "-leading",
        ".leading",
        "name@sha256:abc",
        "ns.with.dot/m",
        "x" * 300,
        "modèle",
        "m:tag/with/slash:x:",
        "m:-tag",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelNameError):
        parse(name)


def test_matching_ignores_case_and_the_default_parts() -> None:
    assert same_model("llama3.2", "llama3.2:latest")
    assert same_model("LLaMA3.2", "library/llama3.2:LATEST")
    assert not same_model("llama3.2", "llama3.2:1b")
    assert not same_model("myns/llama3.2", "llama3.2")


def test_ollama_timestamps_with_nanoseconds_parse() -> None:
    from llmserve.backends.ollama import parse_timestamp

    parsed = parse_timestamp("2024-09-12T03:54:03.516566123Z")
    assert parsed is not None and parsed.microsecond == 516566 and parsed.utcoffset() is not None
    assert parse_timestamp("2024-09-12T03:54:03Z") is not None
    assert parse_timestamp("garbage") is None
