"""Generation: the one path every face (native API, CLI, later OpenAI routes) goes through.

``start()`` does everything that can fail before the first byte — checks the prompt, resolves
the active model, opens the upstream generation and waits for its first token — so each
failure can still get its own status. The returned :class:`Generation` yields text; its
``aclose()`` (always called, by ``finally``) closes the upstream request, which is what stops
the engine when a client leaves, and hands one row to the request-log writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from llmserve import errors
from llmserve.backends.base import Backend, GenerationStream
from llmserve.domain import GenerationRequest, GenerationResult
from llmserve.logging_setup import current_request_id
from llmserve.services.active_model import ActiveModelService
from llmserve.services.admission import Admission
from llmserve.services.request_log import RequestLogRow, RequestLogWriter

if TYPE_CHECKING:
    from llmserve.metrics import Metrics


class GenerationService:
    def __init__(
        self,
        backend: Backend,
        active_model: ActiveModelService,
        request_log: RequestLogWriter,
        admission: Admission,
        *,
        max_prompt_chars: int,
        log_prompts: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self.admission = admission
        self._active_model = active_model
        self._request_log = request_log
        self._max_prompt_chars = max_prompt_chars
        self._log_prompts = log_prompts

    def check(self, request: GenerationRequest) -> None:
        """Rules that need no I/O (the schema already rejected blank prompts)."""
        if len(request.prompt) > self._max_prompt_chars:
            raise errors.PromptTooLargeError(
                f"the prompt has {len(request.prompt)} characters; "
                f"the limit is {self._max_prompt_chars} (MAX_PROMPT_CHARS)"
            )
        if not request.prompt.strip():
            raise errors.InvalidRequestError("the prompt is empty")
        for text in (request.prompt, request.system or "", *request.options.stop):
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:  # JSON's "\ud800" decodes to a lone surrogate
                    raise errors.InvalidRequestError(
                        "the request contains text that is not valid Unicode (a lone surrogate)"
                    ) from None

    async def start(
        self,
        request: GenerationRequest,
        *,
        route: str,
        request_id: str | None = None,
        api_key_id: int | None = None,
        model: str | None = None,
    ) -> Generation:
        """Open a generation on ``model`` (already resolved by the caller), else the active one."""
        self.check(request)
        model = model or self._active_model.current
        generation = Generation(
            request,
            model=model,
            route=route,
            request_id=request_id or current_request_id(),
            api_key_id=api_key_id,
            request_log=self._request_log,
            log_prompts=self._log_prompts,
            metrics=self._metrics,
        )
        await generation.open(self._backend, self.admission)
        return generation

    async def complete(
        self,
        request: GenerationRequest,
        *,
        route: str,
        request_id: str | None = None,
        api_key_id: int | None = None,
        model: str | None = None,
    ) -> tuple[str, Generation]:
        """Run a whole generation and return its text (the non-streaming face)."""
        generation = await self.start(
            request, route=route, request_id=request_id, api_key_id=api_key_id, model=model
        )
        parts: list[str] = []
        try:
            async for batch in generation.batches():
                parts.extend(batch)
        finally:
            await generation.aclose()
        return "".join(parts), generation


class Generation:
    """One generation in flight: an async iterator of text fragments."""

    def __init__(
        self,
        request: GenerationRequest,
        *,
        model: str,
        route: str,
        request_id: str | None,
        api_key_id: int | None,
        request_log: RequestLogWriter,
        log_prompts: bool,
        metrics: Metrics | None = None,
    ) -> None:
        self.request = request
        self._metrics = metrics
        self._error_code: str | None = None
        self.model = model
        self._route = route
        self._request_id = request_id
        self._api_key_id = api_key_id
        self._request_log = request_log
        self._log_prompts = log_prompts
        self._stream: GenerationStream | None = None
        self._admission: Admission | None = None
        self._started = time.perf_counter()
        self._ttft: float | None = None
        self._pieces: list[str] | None = [] if log_prompts else None
        self._status = "ok"
        self._error: str | None = None
        self._closed = False

    async def open(self, backend: Backend, admission: Admission) -> None:
        try:
            await admission.acquire()
        except BaseException as exc:
            self._fail(exc)
            await self.aclose()
            raise
        self._admission = admission
        try:
            self._stream = await backend.open_generation(self.model, self.request)
        except BaseException as exc:
            self._fail(exc)
            await self.aclose()
            raise
        self._ttft = time.perf_counter() - self._started

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    def batches(self) -> AsyncIterator[list[str]]:
        """Text fragments grouped as they arrived, so a burst can be written at once.

        The backend stream's own iterator unless the text is kept for the log: no generator of
        this class in between (per token, each level of async generator costs its own resume).
        What ended it early is read back from the stream (``failure``) when closing.
        """
        assert self._stream is not None, "open() first"
        if self._pieces is None:
            return self._stream.batches()
        return self._kept_batches(self._stream, self._pieces)

    @staticmethod
    async def _kept_batches(
        stream: GenerationStream, pieces: list[str]
    ) -> AsyncIterator[list[str]]:
        async for batch in stream.batches():
            pieces.extend(batch)
            yield batch

    @property
    def result(self) -> GenerationResult | None:
        """Done reason and token counts, once the output has ended normally."""
        return self._stream.result if self._stream is not None else None

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, errors.LlmserveError):
            self._error_code = exc.code
        if isinstance(exc, errors.OverloadedError):
            self._status, self._error = "rejected", exc.detail
        elif isinstance(exc, errors.BackendTimeoutError):
            self._status, self._error = "timeout", exc.detail
        elif isinstance(exc, errors.LlmserveError):
            self._status, self._error = "error", exc.detail
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit | KeyboardInterrupt):
            self._status, self._error = "cancelled", "the client went away"
        else:
            self._status, self._error = "error", f"internal error: {exc!r}"

    async def aclose(self) -> None:
        """Stop the upstream work, free the admission slot and log the outcome. Idempotent."""
        if self._closed:
            return
        self._closed = True
        stream = self._stream
        try:
            if stream is not None:
                if stream.failure is not None and self._status == "ok":
                    self._fail(stream.failure)
                if self.result is None and self._status == "ok":
                    self._status, self._error = "cancelled", "the client went away"
                await asyncio.shield(stream.aclose())
        finally:
            if self._admission is not None:
                self._admission.release()
                self._admission = None
            self._log(stream)

    def _log(self, stream: GenerationStream | None) -> None:
        usage = self.result.usage if self.result is not None else None
        completion = usage.completion_tokens if usage is not None else 0
        if not completion and stream is not None:
            completion = stream.tokens_received
        row = RequestLogRow(
            created_at=datetime.now(UTC),
            route=self._route,
            model=self.model,
            status=self._status,
            duration_ms=(time.perf_counter() - self._started) * 1000.0,
            completion_tokens=completion,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            ttft_ms=self._ttft * 1000.0 if self._ttft is not None else None,
            error=self._error,
            request_id=self._request_id,
            api_key_id=self._api_key_id,
            prompt=self.request.prompt if self._log_prompts else None,
            response="".join(self._pieces) if self._pieces is not None else None,
        )
        self._request_log.record(row)
        if self._metrics is not None:
            self._metrics.generation_ended(row, self._error_code)
