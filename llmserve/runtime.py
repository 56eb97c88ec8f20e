"""Runtime: owns the engine, sessions, HTTP client, backend and services of one process.

Both faces build one: the API in its lifespan, the CLI around a command. Nothing is created at
import time, and ``async with Runtime(settings)`` releases everything it made, in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from llmserve.backends.base import Backend
from llmserve.backends.factory import create_backend, http_client
from llmserve.backends.pool import BackendPool
from llmserve.db import migrate
from llmserve.db.session import make_engine, make_sessions
from llmserve.metrics import Metrics
from llmserve.services.active_model import ActiveModelService
from llmserve.services.admission import Admission
from llmserve.services.embeddings import EmbeddingService
from llmserve.services.generation import GenerationService
from llmserve.services.images import ImageFetcher
from llmserve.services.keys import KeyService
from llmserve.services.models import ModelService
from llmserve.services.policy import PolicyService
from llmserve.services.request_log import RequestLogWriter
from llmserve.services.usage import prune_request_log, retention_period
from llmserve.settings import Settings

log = logging.getLogger(__name__)


class Runtime:
    engine: Engine
    sessions: sessionmaker[Session]
    backend: Backend
    active_model: ActiveModelService
    request_log: RequestLogWriter
    generation: GenerationService
    embeddings: EmbeddingService
    models: ModelService
    keys: KeyService
    #: The keys' limits (None with AUTH_REQUIRED=false: no keys, no limits).
    policy: PolicyService | None

    def __init__(
        self,
        settings: Settings,
        *,
        follow_active_model: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        settings.check_backend()
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._follow = follow_active_model
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Runtime:
        settings = self.settings
        stack = self._stack
        self.engine = make_engine(settings.DATABASE_URL)
        stack.callback(self.engine.dispose)
        if settings.is_sqlite:
            # The embedded default: a local file that nobody else migrates for us.
            migrate.upgrade(settings.DATABASE_URL)
        self.sessions = make_sessions(self.engine)
        client = http_client(settings)
        stack.push_async_callback(client.aclose)
        self.backend = create_backend(settings, client)
        stack.push_async_callback(self.backend.aclose)
        await self.backend.start()
        if isinstance(self.backend, BackendPool):
            self.metrics.follow_backends(self.backend.servers)
        self.request_log = RequestLogWriter(self.sessions, capacity=settings.REQUEST_LOG_BUFFER)
        self.request_log.on_drop = self.metrics.log_rows_dropped.inc
        self.request_log.start()
        stack.callback(self.request_log.stop)
        self.active_model = ActiveModelService(
            self.sessions, self.backend.built_in_model, settings.ACTIVE_MODEL_REFRESH_S
        )
        await self.active_model.start(follow=self._follow)
        stack.push_async_callback(self.active_model.stop)
        admission = Admission(
            # Several backend servers: MAX_CONCURRENT_GENERATIONS each (the pool's own limit).
            self.backend.max_concurrency or settings.MAX_CONCURRENT_GENERATIONS,
            settings.MAX_QUEUED_GENERATIONS,
            settings.QUEUE_TIMEOUT_S,
        )
        self.metrics.follow_admission(lambda: admission.running, lambda: admission.queued)
        # Keys (and so their limits) exist only with AUTH_REQUIRED=true.
        self.policy = None
        if settings.AUTH_REQUIRED and self._follow:
            self.policy = PolicyService(
                self.engine,
                fail_mode=settings.POLICY_FAIL_MODE,
                lease_s=settings.POLICY_LEASE_S,
                metrics=self.metrics,
            )
            await self.policy.start()
            stack.push_async_callback(self.policy.stop)
        self.models = ModelService(
            self.backend,
            self.active_model,
            self.sessions,
            validate_names=settings.LLM_BACKEND == "ollama",
            servers=settings.backend_urls,
        )
        self.generation = GenerationService(
            self.backend,
            self.active_model,
            self.request_log,
            admission,
            max_prompt_chars=settings.MAX_PROMPT_CHARS,
            log_prompts=settings.LOG_PROMPTS,
            metrics=self.metrics,
            resolve=self.models.resolve,
            images=ImageFetcher(
                client, allow_urls=settings.ALLOW_IMAGE_URLS, max_bytes=settings.MAX_IMAGE_BYTES
            ),
            policy=self.policy,
        )
        self.embeddings = EmbeddingService(
            self.backend,
            self.active_model,
            self.request_log,
            admission,
            max_prompt_chars=settings.MAX_PROMPT_CHARS,
            embedding_model=settings.EMBEDDING_MODEL,
            resolve=self.models.resolve,
            metrics=self.metrics,
            policy=self.policy,
        )
        stack.push_async_callback(self.models.aclose)
        self.keys = KeyService(self.sessions, settings.ACTIVE_MODEL_REFRESH_S)
        if settings.AUTH_REQUIRED and self._follow:
            await self.keys.start()
            stack.push_async_callback(self.keys.stop)
        keep = retention_period(settings)
        if keep is not None and self._follow:
            pruner = asyncio.create_task(self._prune_hourly(keep), name="request-log-retention")
            stack.push_async_callback(_cancel, pruner)
        return self

    async def _prune_hourly(self, keep: timedelta) -> None:
        """Apply REQUEST_LOG_RETENTION_DAYS: now, then once an hour."""
        while True:
            try:
                deleted = await asyncio.to_thread(prune_request_log, self.sessions, keep)
                if deleted:
                    log.info("request log: deleted %d rows older than %s", deleted, keep)
            except SQLAlchemyError as exc:
                log.warning("request log: could not apply the retention (%s)", exc)
            await asyncio.sleep(3600)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
