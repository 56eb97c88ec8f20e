"""Plain types shared by the services, the backends, the API and the CLI.

No wire format lives here: these are what a generation *is*, whatever speaks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True, frozen=True)
class GenerationOptions:
    """Sampling options, already validated (SPEC §3 ranges)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None


@dataclass(slots=True, frozen=True)
class GenerationRequest:
    """What a client asks for. The model is chosen by the service, never by the request."""

    prompt: str
    system: str | None = None
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class GenerationResult:
    """How a finished generation ended, filled in by the backend's stream when it completes."""

    done_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True, frozen=True)
class ModelInfo:
    """An installed model as the backend reports it. ``name`` always includes the tag."""

    name: str
    size: int = 0
    modified_at: datetime | None = None
    digest: str | None = None
    details: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class PullProgress:
    """One progress report of a pull (Ollama's fields; absent ones are None)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
