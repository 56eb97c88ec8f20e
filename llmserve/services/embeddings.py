"""Embeddings: the one path every face (native ``/api/v1/embed``, OpenAI ``/v1/embeddings``, the
CLI) goes through.

Like a generation, an embedding request takes an admission slot (it runs on the same engine),
is refused before any backend call when its input is too large, and writes one request-log row.
The model is the one the client names (resolved like a generation's), else ``EMBEDDING_MODEL``,
else the active model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llmserve import errors
from llmserve.backends.base import Backend
from llmserve.domain import Embeddings
from llmserve.logging_setup import current_request_id
from llmserve.services.active_model import ActiveModelService
from llmserve.services.admission import Admission
from llmserve.services.generation import check_size, check_unicode
from llmserve.services.request_log import RequestLogRow, RequestLogWriter

if TYPE_CHECKING:
    from llmserve.metrics import Metrics
    from llmserve.services.keys import Principal
    from llmserve.services.policy import PolicyService

MAX_INPUTS = 2048  # OpenAI's own limit on the number of inputs in one request


@dataclass(frozen=True, slots=True)
class EmbeddingAnswer:
    model: str
    embeddings: Embeddings


class EmbeddingService:
    def __init__(
        self,
        backend: Backend,
        active_model: ActiveModelService,
        request_log: RequestLogWriter,
        admission: Admission,
        *,
        max_prompt_chars: int,
        embedding_model: str | None = None,
        resolve: Callable[[str], Awaitable[str]] | None = None,
        metrics: Metrics | None = None,
        policy: PolicyService | None = None,
    ) -> None:
        self._backend = backend
        self._policy = policy
        self._active_model = active_model
        self._request_log = request_log
        self._admission = admission
        self._max_prompt_chars = max_prompt_chars
        self._embedding_model = embedding_model
        self._resolve = resolve
        self._metrics = metrics

    @property
    def default_model(self) -> str:
        return self._embedding_model or self._active_model.current

    def check(self, inputs: list[str], dimensions: int | None) -> None:
        if len(inputs) > MAX_INPUTS:
            raise errors.InvalidRequestError(f"at most {MAX_INPUTS} inputs per request")
        check_size(sum(len(text) for text in inputs), self._max_prompt_chars, "input")
        check_unicode(inputs, "input")
        if dimensions is not None and dimensions < 1:
            raise errors.InvalidRequestError("dimensions must be at least 1")

    async def embed(
        self,
        inputs: list[str],
        *,
        route: str,
        model: str | None = None,
        dimensions: int | None = None,
        key: Principal | None = None,
        ollama: dict[str, Any] | None = None,
    ) -> EmbeddingAnswer:
        """One vector per input, in order, under the API ``key``'s policy. ``ollama``: see
        ``Backend.embed``."""
        self.check(inputs, dimensions)
        if model is None:
            model = self.default_model
        elif self._resolve is not None:
            model = await self._resolve(model)
        started = time.perf_counter()
        status, error, code, tokens = "ok", None, None, None
        acquired = False
        ticket = None
        try:
            if self._policy is not None:
                ticket = await self._policy.admit(key, model)
            await self._admission.acquire()
            acquired = True
            result = await self._backend.embed(model, inputs, dimensions=dimensions, ollama=ollama)
            tokens = result.prompt_tokens
            return EmbeddingAnswer(model, result)
        except errors.LlmserveError as exc:
            status, error, code = exc.log_status, exc.detail, exc.code
            raise
        except (asyncio.CancelledError, KeyboardInterrupt):
            status, error = "cancelled", "the client went away"
            raise
        except Exception as exc:
            status, error = "error", f"internal error: {exc!r}"
            raise
        finally:
            if acquired:
                self._admission.release()
            row = RequestLogRow(
                created_at=datetime.now(UTC),
                route=route,
                model=model,
                status=status,
                duration_ms=(time.perf_counter() - started) * 1000.0,
                prompt_tokens=tokens,
                error=error,
                request_id=current_request_id(),
                api_key_id=key.key_id if key is not None else None,
            )
            self._request_log.record(row)
            if self._policy is not None:
                self._policy.settle(ticket, tokens or 0)
            if self._metrics is not None:
                self._metrics.generation_ended(row, code)
