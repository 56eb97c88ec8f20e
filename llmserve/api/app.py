"""The FastAPI app factory. ``create_app(settings)`` builds; the lifespan owns the Runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from llmserve import __version__
from llmserve.api import errors, methods, openapi
from llmserve.api.auth import PUBLIC_PATHS, AuthMiddleware
from llmserve.api.drain import DrainBeforeShutdown
from llmserve.api.limits import BodyLimitMiddleware, body_limit_for, image_body_limit_for
from llmserve.api.request_id import RequestIdMiddleware
from llmserve.api.routes import (
    chat,
    generate,
    health,
    messages,
    models,
    ollama,
    ollama_models,
    openai,
    responses,
)
from llmserve.metrics import HttpMetricsMiddleware, Metrics
from llmserve.runtime import Runtime
from llmserve.settings import Settings, load_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings default to the environment, read now (not at import)."""
    settings = settings or load_settings()
    settings.check_backend()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Runtime(settings, metrics=metrics) as runtime:
            app.state.runtime = runtime
            if not settings.AUTH_REQUIRED and not settings.listens_on_loopback:
                log.warning(
                    "AUTH_REQUIRED=false and the server listens on %s: anyone who can reach "
                    "it can use it",
                    settings.HOST_BIND_IP,
                )
            log.info(
                "llmserve %s ready: backend=%s active model=%s",
                __version__,
                settings.LLM_BACKEND,
                runtime.active_model.current,
            )
            yield

    app = FastAPI(
        title="llmserve",
        version=__version__,
        description="A private, production-grade API server for local large language models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    methods.install(app)
    public = PUBLIC_PATHS if settings.METRICS_REQUIRE_AUTH else PUBLIC_PATHS | {"/metrics"}
    openapi.install(app, public_paths=public, query_values={"server": settings.backend_urls})
    if settings.AUTH_REQUIRED:
        app.add_middleware(AuthMiddleware, public_paths=public)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    # Added last, so they run first: an oversized body is refused before anything else, and
    # every response, refusals included, carries its X-Request-ID.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=body_limit_for(settings.MAX_PROMPT_CHARS),
        image_limit=image_body_limit_for(settings.MAX_PROMPT_CHARS, settings.MAX_IMAGE_BYTES),
    )
    # Streams send their bodies beneath the middlewares listed here (see api/request_id.py):
    # list a middleware only if no response body needs to go through it.
    app.add_middleware(
        RequestIdMiddleware,
        passes_bodies_through=(BodyLimitMiddleware, HttpMetricsMiddleware, AuthMiddleware),
    )
    app.include_router(generate.router)
    generate.install_fast_route(app.router)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(messages.router)
    app.include_router(ollama.router)
    app.include_router(ollama_models.router)
    return app


def app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory`` (``llmserve serve``): drained before it shuts down."""
    return DrainBeforeShutdown(create_app())
