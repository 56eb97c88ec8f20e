"""Test doubles for llmserve's upstreams; see :mod:`tests.fakes.ollama_double`."""

from tests.fakes.ollama_double import (
    GenerationRecord,
    OllamaDouble,
    PullRecord,
    RecordedRequest,
    Script,
    run_ollama_double,
)

__all__ = [
    "GenerationRecord",
    "OllamaDouble",
    "PullRecord",
    "RecordedRequest",
    "Script",
    "run_ollama_double",
]
