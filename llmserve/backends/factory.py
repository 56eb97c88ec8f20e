"""Builds the backend that ``LLM_BACKEND`` names."""

from __future__ import annotations

import httpx

from llmserve.backends.base import Backend
from llmserve.settings import Settings


def create_backend(settings: Settings, client: httpx.AsyncClient) -> Backend:
    """The configured backend. ``client`` is the runtime's shared HTTP client."""
    if settings.LLM_BACKEND == "ollama":
        from llmserve.backends.ollama import OllamaBackend

        assert settings.BUILT_IN_OLLAMA_MODEL, "Settings.check_backend() guarantees this"
        return OllamaBackend(
            client,
            settings.BUILT_IN_OLLAMA_MODEL,
            first_token_timeout_s=settings.FIRST_TOKEN_TIMEOUT_S,
            idle_timeout_s=settings.TOKEN_IDLE_TIMEOUT_S,
            total_timeout_s=settings.REQUEST_TIMEOUT_S,
        )
    if settings.LLM_BACKEND == "openai":
        from llmserve.backends.openai import OpenAIBackend

        assert settings.OPENAI_BASE_URL, "Settings.check_backend() guarantees this"
        return OpenAIBackend(
            settings.OPENAI_BASE_URL,
            settings.OPENAI_API_KEY,
            client,
            first_token_timeout_s=settings.FIRST_TOKEN_TIMEOUT_S,
            idle_timeout_s=settings.TOKEN_IDLE_TIMEOUT_S,
        )
    from llmserve.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.EMBEDDED_MODEL_PATH, settings.EMBEDDED_MODELS_DIR)


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The one HTTP client for the backend: pooled, with the configured connect timeout."""
    base_url = settings.OLLAMA_BASE_URL
    if settings.LLM_BACKEND == "openai" and settings.OPENAI_BASE_URL:
        base_url = settings.OPENAI_BASE_URL
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(
            connect=settings.BACKEND_CONNECT_TIMEOUT_S,
            read=settings.FIRST_TOKEN_TIMEOUT_S,
            write=30.0,
            pool=settings.QUEUE_TIMEOUT_S,
        ),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        trust_env=False,
    )
