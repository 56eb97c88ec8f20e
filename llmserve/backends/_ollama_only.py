"""What only Ollama understands, and how the other backends answer it.

A request through llmserve's Ollama API may carry Ollama's own top-level fields
(``OllamaExtras.fields``) and options with no llmserve field (``GenerationOptions.extra``).
The Ollama backend sends them as they came. The OpenAI-compatible and embedded backends call
:func:`refuse_ollama_only` first: a field or sampling option that would change the answer is
refused with ``UnsupportedError`` naming it (never ignored); a field at its default
(``think: false``, ``raw: false``, ``truncate: true``…) changes nothing and passes, and so do
the options that only configure Ollama's runner (threads, GPU layers, memory mapping), which
have no meaning for another engine.
"""

from __future__ import annotations

from typing import Any

from llmserve import errors
from llmserve.domain import GenerationRequest

#: Ollama options that configure its runner process, not the answer.
RUNNER_OPTIONS = frozenset(
    {
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "use_mmap",
        "use_mlock",
        "num_thread",
        "numa",
        "f16_kv",
        "vocab_only",
        "logits_all",
    }
)

#: Ollama's top-level fields and the values that leave the answer as it would be without them.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "think": (None, False),
    "raw": (None, False),
    "suffix": (None, ""),
    "template": (None, ""),
    "context": (None, []),
    "truncate": (None, True),
    "shift": (None, True),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
}


def refuse_ollama_only(request: GenerationRequest, model: str, backend: str) -> None:
    """``UnsupportedError`` for the first Ollama-only field or option of a generation that
    ``backend`` would have to ignore."""
    fields = request.ollama.fields if request.ollama is not None else {}
    refuse_ollama_fields(fields, request.options.extra, model, backend)


def refuse_ollama_fields(
    fields: dict[str, Any], options: dict[str, Any], model: str, backend: str
) -> None:
    """The same for any request: Ollama's top-level ``fields`` and its ``options``."""
    for name, value in fields.items():
        if not _neutral(name, value):
            raise _refused(model, f"Ollama's '{name}'", backend)
    for name in options:
        if name not in RUNNER_OPTIONS:
            raise _refused(model, f"the option '{name}'", backend)


def refuse_embedding_fields(fields: dict[str, Any] | None, model: str, backend: str) -> None:
    """:func:`refuse_ollama_fields` for an embedding request's Ollama fields."""
    if fields:
        rest = {name: value for name, value in fields.items() if name != "options"}
        refuse_ollama_fields(rest, fields.get("options") or {}, model, backend)


def _neutral(name: str, value: Any) -> bool:
    neutral = _NEUTRAL.get(name)
    return neutral is not None and any(
        value == candidate and type(value) is type(candidate) for candidate in neutral
    )


def _refused(model: str, what: str, backend: str) -> errors.UnsupportedError:
    return errors.UnsupportedError(
        f"model '{model}' does not support {what} on the {backend} backend (only Ollama has it)"
    )
