"""Test doubles for llmserve's upstreams; see :mod:`tests.fakes.ollama_double`."""

from tests.fakes.ollama_double import (
    EmbedRecord,
    GenerationRecord,
    OllamaDouble,
    PullRecord,
    RecordedRequest,
    Script,
    run_ollama_double,
)

__all__ = [
    "EmbedRecord",
    "GenerationRecord",
    "OllamaDouble",
    "PullRecord",
    "RecordedRequest",
    "Script",
    "run_ollama_double",
]
