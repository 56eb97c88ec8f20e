"""The stream of a generation a pool routed: the member's own stream, unchanged per event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from llmserve.backends.base import GenerationStream
from llmserve.domain import GenerationResult, StreamEvent


class RoutedStream:
    """``inner``, whose own iterators are handed out (no extra frame per token), and which
    reports its end once, on close: ``on_close(result, failure)`` frees the server's slot."""

    __slots__ = ("_inner", "_on_close", "backend_url")

    def __init__(
        self,
        inner: GenerationStream,
        backend_url: str,
        on_close: Callable[[GenerationResult | None, BaseException | None], None],
    ) -> None:
        self._inner = inner
        self._on_close: Callable[[GenerationResult | None, BaseException | None], None] | None
        self._on_close = on_close
        #: The server it runs on (its base URL as configured).
        self.backend_url = backend_url

    @property
    def result(self) -> GenerationResult | None:
        return self._inner.result

    @result.setter
    def result(self, value: GenerationResult | None) -> None:
        self._inner.result = value

    @property
    def tokens_received(self) -> int:
        return self._inner.tokens_received

    @tokens_received.setter
    def tokens_received(self, value: int) -> None:
        self._inner.tokens_received = value

    @property
    def failure(self) -> BaseException | None:
        return self._inner.failure

    @failure.setter
    def failure(self, value: BaseException | None) -> None:
        self._inner.failure = value

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._inner.__aiter__()

    def batches(self) -> AsyncIterator[list[StreamEvent]]:
        return self._inner.batches()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close(self._inner.result, self._inner.failure)
