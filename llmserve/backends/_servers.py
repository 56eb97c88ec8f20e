"""One server of a backend pool: its health, what it holds, and llmserve's counters for it.

Health is a circuit breaker with backoff. A server is *up* (in rotation) until a request finds
it refusing connections or a health probe fails; it is then *down* (out of rotation) and probed
again after 0.5 s, 1 s, 2 s… up to the health interval, and put back by the first probe it
answers. What it holds (installed models from ``/api/tags`` or ``/v1/models``, loaded ones from
``/api/ps``) is learned from the server itself, by the probes and on a routing miss.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from llmserve import names
from llmserve.backends.base import Backend
from llmserve.domain import ModelInfo
from llmserve.errors import InvalidModelNameError, LlmserveError

FIRST_BACKOFF_S = 0.5


@lru_cache(maxsize=4096)
def model_key(name: str) -> str:
    """The comparison key of a model name (``llama3.2`` and ``LLAMA3.2:latest`` are one)."""
    try:
        return names.key(name)
    except InvalidModelNameError:  # an OpenAI-compatible server's own names
        return name.lower()


@dataclass
class Breaker:
    """Up, or down until ``retry_at`` with a backoff that doubles up to ``max_backoff_s``."""

    max_backoff_s: float
    up: bool = True
    failures: int = 0
    retry_at: float = 0.0
    reason: str | None = None
    #: When the state last changed (``time.monotonic()``).
    changed_at: float = field(default_factory=time.monotonic)

    def succeeded(self) -> bool:
        """Back in rotation; True when it was out."""
        came_back = not self.up
        self.up, self.failures, self.reason = True, 0, None
        if came_back:
            self.changed_at = time.monotonic()
        return came_back

    def failed(self, reason: str) -> bool:
        """Out of rotation until the next probe; True when it was in."""
        now = time.monotonic()
        went_down = self.up
        self.failures += 1
        backoff = min(FIRST_BACKOFF_S * 2 ** min(self.failures - 1, 16), self.max_backoff_s)
        self.retry_at = now + backoff
        self.up, self.reason = False, reason
        if went_down:
            self.changed_at = now
        return went_down


class BackendServer:
    """One configured server (``url`` exactly as configured) and the backend that talks to it."""

    def __init__(self, index: int, url: str, backend: Backend, max_backoff_s: float) -> None:
        self.index = index
        self.url = url
        self.backend = backend
        self.breaker = Breaker(max_backoff_s)
        #: Installed models by comparison key; None until the server has been asked.
        self.models: dict[str, ModelInfo] | None = None
        self.loaded: set[str] = set()
        self.version: str | None = None
        self.in_flight = 0
        self.generations = 0
        self.failovers = 0
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        #: Set to make the server's watcher probe it now (a request saw it fail).
        self.poke = asyncio.Event()

    @property
    def up(self) -> bool:
        return self.breaker.up

    def has(self, key: str) -> bool:
        return self.models is not None and key in self.models

    def record_error(self, code: str, detail: str) -> None:
        self.errors[code] += 1
        self.last_error = detail

    def set_models(self, models: list[ModelInfo]) -> None:
        self.models = {model_key(info.name): info for info in models}

    def status(self) -> str:
        """``ok``, or why it is out of rotation."""
        return "ok" if self.up else f"unavailable: {self.breaker.reason or 'not answering'}"

    def describe(self) -> dict[str, object]:
        """The server as ``/ready``, ``/api/v1/backends`` and ``llmserve backends`` show it."""
        return {
            "status": self.status(),
            "version": self.version,
            "models": sorted(info.name for info in (self.models or {}).values()),
            "loaded": sorted(
                info.name for key, info in (self.models or {}).items() if key in self.loaded
            ),
            "in_flight": self.in_flight,
            "generations": self.generations,
            "errors": sum(self.errors.values()),
            "failovers": self.failovers,
            "last_error": self.last_error,
        }


async def probe(server: BackendServer, timeout_s: float) -> str | None:
    """Ask ``server`` its version (Ollama), models and loaded models, and keep them; return why
    it failed, or None. Cheap calls only: never a generation."""
    backend = server.backend
    try:
        async with asyncio.timeout(timeout_s):
            version = await backend.version() if backend.name == "ollama" else None
            models = await backend.list_models()
            loaded = await backend.running_models()
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except LlmserveError as exc:
        return exc.detail
    server.version = version
    server.set_models(models)
    server.loaded = {model_key(running.name) for running in loaded}
    return None


async def check(server: BackendServer, timeout_s: float) -> bool:
    """Probe ``server`` once and set its breaker from the answer; True when it answered."""
    reason = await probe(server, timeout_s)
    if reason is None:
        server.breaker.succeeded()
        return True
    server.record_error("probe_failed", reason)
    server.breaker.failed(reason)
    return False
