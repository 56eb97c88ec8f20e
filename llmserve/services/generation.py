"""Generation: the one path every face (native API, OpenAI, Ollama, CLI) goes through.

:meth:`GenerationService.generate` is the entry point. It does everything that can fail before
the first byte — checks the conversation, resolves the model, takes an admission slot, opens the
upstream generation and waits for its first output — so each failure can still get its own
status. The returned :class:`Generation` yields typed events (text, tool-call deltas); its
``aclose()`` (always called, by ``finally``) closes the upstream request, which is what stops
the engine when a client leaves, and hands one row to the request-log writer. With
``whole=True`` it runs to the end first: ``text`` and ``result`` then hold the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from llmserve import errors
from llmserve.backends.base import Backend, GenerationStream
from llmserve.domain import GenerationRequest, GenerationResult, StreamEvent, Thinking
from llmserve.logging_setup import current_request_id
from llmserve.services.active_model import ActiveModelService
from llmserve.services.admission import Admission
from llmserve.services.images import ImageFetcher
from llmserve.services.request_log import RequestLogRow, RequestLogWriter

if TYPE_CHECKING:
    from llmserve.metrics import Metrics
    from llmserve.services.keys import Principal
    from llmserve.services.policy import PolicyService, Ticket


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
        resolve: Callable[[str], Awaitable[str]] | None = None,
        images: ImageFetcher | None = None,
        policy: PolicyService | None = None,
    ) -> None:
        self._backend = backend
        self._policy = policy
        self._resolve = resolve
        self._images = images
        self._metrics = metrics
        self.admission = admission
        self._active_model = active_model
        self._request_log = request_log
        self._max_prompt_chars = max_prompt_chars
        self._log_prompts = log_prompts

    def check(self, request: GenerationRequest) -> None:
        """Rules that need no I/O: a turn to answer, the size limit, valid Unicode, tools."""
        messages = request.messages
        if not messages or all(m.role == "system" for m in messages):
            raise errors.InvalidRequestError("the conversation needs a user message")
        if not any(m.content.strip() or m.images or m.tool_calls for m in messages):
            raise errors.InvalidRequestError("the prompt is empty")
        check_size(sum(len(m.content) for m in messages), self._max_prompt_chars, "prompt")
        check_unicode(request.texts(), "request")
        choice = request.tool_choice
        if choice.mode in ("required", "function") and not request.tools:
            raise errors.InvalidRequestError(f"tool_choice '{choice.mode}' needs tools")
        if choice.mode == "function" and not request.offered_tools:
            raise errors.InvalidRequestError(
                f"tool_choice names the function '{choice.name}', which is not among the tools"
            )
        names = [tool.name for tool in request.tools]
        if len(set(names)) != len(names):
            raise errors.InvalidRequestError("two tools have the same name")

    async def generate(
        self,
        request: GenerationRequest,
        *,
        route: str,
        model: str | None = None,
        key: Principal | None = None,
        request_id: str | None = None,
        whole: bool = False,
    ) -> Generation:
        """The one entry point: open a generation on ``model`` (a name the client gave, resolved
        by the model service's rules; the active model when None) under the API ``key``'s
        policy (its limits and models). With ``whole`` the answer is read to its end (and the
        generation closed) before this returns."""
        self.check(request)
        if self._images is not None:
            request = await self._images.resolve(request)
        if model is None:
            model = self._active_model.current
        elif self._resolve is not None:
            model = await self._resolve(model)
        generation = Generation(
            request,
            model=model,
            route=route,
            request_id=request_id or current_request_id(),
            api_key_id=key.key_id if key is not None else None,
            request_log=self._request_log,
            log_prompts=self._log_prompts,
            metrics=self._metrics,
        )
        await generation.open(self._backend, self.admission, self._policy, key)
        if whole:
            await generation.read_all()
        return generation


def check_size(size: int, max_chars: int, what: str) -> None:
    """At most ``max_chars`` characters (MAX_PROMPT_CHARS), else 413."""
    if size > max_chars:
        raise errors.PromptTooLargeError(
            f"the {what} has {size} characters; the limit is {max_chars} (MAX_PROMPT_CHARS)"
        )


def check_unicode(texts: list[str], what: str) -> None:
    """Valid Unicode: no lone surrogate, which JSON can carry and no engine can read."""
    for text in texts:
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:  # JSON's "\ud800" decodes to a lone surrogate
                raise errors.InvalidRequestError(
                    f"the {what} contains text that is not valid Unicode (a lone surrogate)"
                ) from None


class Generation:
    """One generation in flight: an async iterator of typed events (``llmserve.domain``)."""

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
        self._policy: PolicyService | None = None
        self._ticket: Ticket | None = None
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
        #: When the request reached the service, and how long its first output took (s).
        self.started = time.perf_counter()
        self.ttft: float | None = None
        self.admitted = self.started  # when admission control let it run
        self._pieces: list[StreamEvent] | None = [] if log_prompts else None
        self.text = ""  # the whole text, after read_all()
        self.thinking = ""  # the whole reasoning, after read_all() (Ollama's API only)
        self._status = "ok"
        self._error: str | None = None
        self._closed = False

    async def open(
        self,
        backend: Backend,
        admission: Admission,
        policy: PolicyService | None = None,
        key: Principal | None = None,
    ) -> None:
        """Admit it (the key's policy, then admission control) and start it upstream; every
        refusal is logged (``rejected``) and raised."""
        try:
            if policy is not None:
                self._ticket = await policy.admit(key, self.model)
                self._policy = policy
            await admission.acquire()
        except BaseException as exc:
            self._fail(exc)
            await self.aclose()
            raise
        self._admission = admission
        self.admitted = time.perf_counter()
        try:
            self._stream = await backend.open_generation(self.model, self.request)
        except BaseException as exc:
            self._fail(exc)
            await self.aclose()
            raise
        self.ttft = time.perf_counter() - self.started

    async def read_all(self) -> None:
        """Read the answer to its end into ``text`` (tool calls: ``result``), then close."""
        parts: list[str] = []
        thinking: list[str] = []
        try:
            async for batch in self.batches():
                for piece in batch:
                    if type(piece) is str:
                        parts.append(piece)
                    elif type(piece) is Thinking:
                        thinking.append(piece.text)
        finally:
            await self.aclose()
        self.text = "".join(parts)
        self.thinking = "".join(thinking)

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    def batches(self) -> AsyncIterator[list[StreamEvent]]:
        """Events grouped as they arrived, so a burst can be written at once.

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
        stream: GenerationStream, pieces: list[StreamEvent]
    ) -> AsyncIterator[list[StreamEvent]]:
        async for batch in stream.batches():
            pieces.extend(batch)
            yield batch

    @property
    def result(self) -> GenerationResult | None:
        """Done reason and token counts, once the output has ended normally."""
        return self._stream.result if self._stream is not None else None

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, errors.LlmserveError):
            # The type declares the log's status: rejected, timeout or error.
            self._error_code = exc.code
            self._status, self._error = exc.log_status, exc.detail
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
            duration_ms=(time.perf_counter() - self.started) * 1000.0,
            completion_tokens=completion,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            ttft_ms=self.ttft * 1000.0 if self.ttft is not None else None,
            error=self._error,
            request_id=self._request_id,
            api_key_id=self._api_key_id,
            prompt=_conversation_json(self.request) if self._log_prompts else None,
            response=(
                "".join(p for p in self._pieces if type(p) is str)
                if self._pieces is not None
                else None
            ),
            tool_calls=_call_names(self.result),
            response_format=_format_kind(self.request),
        )
        self._request_log.record(row)
        if self._policy is not None:  # the key pays for what was produced, cancelled or not
            self._policy.settle(self._ticket, (row.prompt_tokens or 0) + row.completion_tokens)
        if self._metrics is not None:
            self._metrics.generation_ended(row, self._error_code)


def _call_names(result: GenerationResult | None) -> str | None:
    """The names of the tool calls the answer held, comma-separated (None: no call)."""
    if result is None or not result.tool_calls:
        return None
    return ",".join(call.name for call in result.tool_calls)[:400]


def _format_kind(request: GenerationRequest) -> str | None:
    if request.tool_choice.mode in ("required", "function") and request.tools:
        return "tool_call"
    fmt = request.response_format
    return None if fmt is None or fmt.kind == "text" else fmt.kind


def _conversation_json(request: GenerationRequest) -> str:
    """The conversation as JSON, for LOG_PROMPTS (images as their size, not their bytes); a
    lone prompt as its text."""
    single = request.single_prompt
    if single is not None and single[1] is None:
        return single[0]
    messages = []
    for message in request.messages:
        item: dict[str, object] = {"role": message.role, "content": message.content}
        if message.images:
            item["images"] = [f"<{len(image)} base64 chars>" for image in message.images]
        if message.tool_calls:
            item["tool_calls"] = [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in message.tool_calls
            ]
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        messages.append(item)
    payload: dict[str, object] = {"messages": messages}
    if request.tools:
        payload["tools"] = [tool.name for tool in request.tools]
    return json.dumps(payload, ensure_ascii=False)
