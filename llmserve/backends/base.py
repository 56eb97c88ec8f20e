"""The Backend protocol every engine implements (Ollama, OpenAI-compatible, embedded).

Contract for generation, which keeps "validate before you stream" possible:

* ``open_generation`` does everything that can fail *before the first token*: it connects,
  sends the request and waits until the engine has accepted it and produced its first output
  (or has failed). Failures raise :mod:`llmserve.errors` types, never transport exceptions.
* The returned :class:`GenerationStream` yields typed events (``llmserve.domain``: text deltas
  as ``str``, :class:`~llmserve.domain.ToolCallDelta`). A failure after the first event raises
  ``BackendStreamError`` / ``BackendTimeoutError``. When iteration ends normally,
  ``stream.result`` holds the done reason, token counts and whole tool calls.
* A capability the engine or model lacks (tools, images, a response format) is refused by
  ``open_generation`` with ``UnsupportedError`` before anything is sent downstream.
* ``aclose()`` must stop the engine's work at once (close the upstream connection, or tell the
  in-process engine to stop) and is safe to call twice, or after the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, runtime_checkable

from llmserve.domain import (
    Embeddings,
    GenerationRequest,
    GenerationResult,
    ModelCard,
    ModelInfo,
    PullProgress,
    RunningModel,
    StreamEvent,
)


@runtime_checkable
class GenerationStream(Protocol):
    result: GenerationResult | None
    tokens_received: int
    #: The exception that ended the output early, if one did (the consumer sees it too).
    failure: BaseException | None

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """The same events, grouped as they arrived (one list per upstream read)."""
        ...

    async def aclose(self) -> None: ...


class PrefetchingStream:
    """Base of the backends' streams: ``prefetch()`` pulls the first output early.

    ``open_generation`` calls ``prefetch()`` so that failures before the first token surface
    before the HTTP response starts; iteration then yields that output first. Subclasses
    implement ``_batches()`` (lists of fragments that arrived together, so that a burst costs
    one downstream write; it records what ended it early in ``failure``) or ``_pieces()`` (one
    fragment at a time).
    """

    _first: list[StreamEvent] | None = None
    _source: AsyncIterator[list[StreamEvent]] | None = None
    #: What ended the output early (an error, a cancellation), recorded by ``_batches``.
    failure: BaseException | None = None

    async def prefetch(self) -> None:
        """Read until the first non-empty batch (or the end), so errors surface before bytes."""
        source = self._source = self._batches()
        async for batch in source:
            self._first = batch
            return

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """Events grouped as they arrived (every list non-empty)."""
        source = self._source
        if source is None:
            source = self._source = self._batches()
        first, self._first = self._first, None
        return _FirstThen(first, source)

    async def _batches(self) -> AsyncIterator[list[StreamEvent]]:
        try:
            async for piece in self._pieces():
                yield [piece]
        except BaseException as exc:
            self.failure = exc
            raise

    def _pieces(self) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError


class _FirstThen:
    """``first`` (if any), then everything ``source`` yields; no generator frame in between."""

    __slots__ = ("_first", "_source")

    def __init__(
        self, first: list[StreamEvent] | None, source: AsyncIterator[list[StreamEvent]]
    ) -> None:
        self._first = first
        self._source = source

    def __aiter__(self) -> _FirstThen:
        return self

    def __anext__(self) -> Awaitable[list[StreamEvent]]:
        first = self._first
        if first is not None:
            self._first = None
            return _ready(first)
        return self._source.__anext__()


async def _ready(value: list[StreamEvent]) -> list[StreamEvent]:
    return value


class Backend(Protocol):
    """An LLM engine. Implementations translate their own errors into llmserve errors."""

    name: str
    #: Generations the engine runs at once (None: no limit of its own). Admission control
    #: never lets more than this run; the others wait in its queue.
    max_concurrency: int | None

    @property
    def built_in_model(self) -> str:
        """The model that is active on an empty database and can never be deleted."""
        ...

    async def start(self) -> None:
        """Called once by the runtime before use (e.g. to learn the built-in model)."""
        ...

    async def open_generation(self, model: str, request: GenerationRequest) -> GenerationStream:
        """Start generating; return once the first output is ready (see the module doc)."""
        ...

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        dimensions: int | None = None,
        ollama: dict[str, Any] | None = None,
    ) -> Embeddings:
        """One vector per input (an empty list for no input). ``UnsupportedError`` where the
        engine or model cannot embed, or cannot shorten vectors to ``dimensions``. ``ollama``:
        the fields of a request through llmserve's Ollama API (``truncate``, ``keep_alive``,
        ``options``), sent to Ollama untouched and refused elsewhere unless neutral."""
        ...

    async def list_models(self) -> list[ModelInfo]:
        """Installed models."""
        ...

    async def version(self) -> str:
        """The engine's version; also the cheapest proof that it answers."""
        ...

    def pull(self, name: str) -> AsyncIterator[PullProgress]:
        """Install a model, reporting progress. Raises NotSupportedError where impossible."""
        ...

    async def delete(self, name: str) -> None:
        """Remove an installed model."""
        ...

    async def warm(self, model: str, keep_alive: float | str | None = None) -> None:
        """Load a model so the next generation does not pay for it; ``keep_alive`` (Ollama's:
        how long it stays loaded, 0 unloads) is refused by the backends without it."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and engines."""
        ...

    async def running_models(self) -> list[RunningModel]:
        """The models loaded in memory now; ``[]`` where the engine cannot tell."""
        ...

    async def show(self, model: str, *, verbose: bool = False) -> ModelCard:
        """What the engine knows of the installed ``model`` (``verbose``: GGUF arrays whole);
        ``ModelNotFoundError`` when it is not installed."""
        ...

    async def copy(self, source: str, destination: str) -> None:
        """Install ``source`` a second time as ``destination`` (replacing it).
        ``ModelNotFoundError`` when ``source`` is not installed; ``NotSupportedError`` where
        the engine cannot."""
        ...

    def create(self, name: str, request: dict[str, Any]) -> AsyncIterator[PullProgress]:
        """Create the model ``name`` from an Ollama ``/api/create`` request (sent as it came),
        reporting progress; the last item has status ``success``. ``NotSupportedError`` where
        the engine cannot."""
        ...
