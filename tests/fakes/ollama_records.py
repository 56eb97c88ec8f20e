"""Plain data for the Ollama double: scripts, installed models and what was recorded."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.ollama_names import ModelName

DEFAULT_SIZE = 2_019_393_189  # llama3.2:3b Q4_K_M, as Ollama reports it


@dataclass
class Script:
    """How the next ``/api/generate`` or ``/api/chat`` request is answered.

    Timeline: wait ``first_token_delay_s`` (nothing at all is sent meanwhile, like Ollama while it
    loads and evaluates the prompt); fail now with ``status`` if set; otherwise stream the
    ``thinking`` chunks then the ``tokens``, sleeping ``delay_s`` before each. ``error_after`` /
    ``cut_after`` / ``options.num_predict`` count positions in that sequence. The earliest of
    them wins (on a tie: error, then cut, then the normal end).
    """

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    status: int | None = None
    error: str = "an error was encountered while running the model"
    error_after: int | None = None
    cut_after: int | None = None
    hang: bool = False
    done_reason: str = "stop"
    prompt_eval_count: int = 7
    thinking: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the double received it (every request, including 404s)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    body: bytes


@dataclass
class GenerationRecord:
    """One generate/chat request that consumed a script (load/unload requests are not recorded).

    ``tokens_sent`` counts chunks written (streaming) or generated so far (``stream:false``).
    ``finished``: the ``done:true`` object went out. ``cancelled``: the client closed the
    connection first. ``aborted``: the double cut the connection (``cut_after``, shutdown,
    ``set_down``). ``error``/``status``: a scripted failure.
    """

    kind: str
    model: str
    prompt: str
    options: dict[str, Any]
    stream: bool
    request: dict[str, Any]
    messages: list[dict[str, Any]] | None = None
    tokens_sent: int = 0
    finished: bool = False
    cancelled: bool = False
    aborted: bool = False
    done_reason: str | None = None
    error: str | None = None
    status: int = 200


@dataclass
class PullRecord:
    """One ``/api/pull`` that got past validation."""

    model: str
    stream: bool
    statuses: list[str] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False
    aborted: bool = False
    error: str | None = None


def _fake_digest(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


@dataclass
class ModelEntry:
    """An installed (or pullable) model."""

    name: ModelName
    size: int
    digest: str
    modified_at: str
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...]

    @classmethod
    def build(
        cls,
        name: ModelName,
        *,
        size: int,
        modified_at: str,
        digest: str | None = None,
        family: str | None = None,
        parameter_size: str | None = None,
        quantization_level: str = "Q4_K_M",
        capabilities: tuple[str, ...] = ("completion",),
    ) -> ModelEntry:
        """Fill plausible details from the name: ``qwen2.5:0.5b`` is family qwen, 0.5B."""
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"digest must be 64 lower-case hex characters, got {digest!r}")
        letters = re.match(r"[A-Za-z]+", name.model)
        sized = re.fullmatch(r"(\d+(?:\.\d+)?)[bB]", name.tag)
        return cls(
            name=name,
            size=size,
            digest=digest or _fake_digest(name.key),
            modified_at=modified_at,
            family=family or (letters.group(0).lower() if letters else "llama"),
            parameter_size=parameter_size or (f"{sized.group(1)}B" if sized else "3.2B"),
            quantization_level=quantization_level,
            capabilities=capabilities,
        )

    @property
    def display(self) -> str:
        return self.name.display

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tags_item(self) -> dict[str, Any]:
        """The object ``/api/tags`` lists for this model."""
        return {
            "name": self.display,
            "model": self.display,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def layers(self) -> list[tuple[str, int]]:
        """Two blobs for pull progress: the weights and a small params/template blob."""
        small = min(487, max(self.size // 2, 1))
        return [
            (_fake_digest(self.name.key, "weights"), max(self.size - small, 1)),
            (_fake_digest(self.name.key, "params"), small),
        ]
