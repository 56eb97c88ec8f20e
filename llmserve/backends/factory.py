"""Builds the backend that ``LLM_BACKEND`` names: one server's backend, or a pool of several.

One server (the usual case) is its backend alone, with no pool in between. Several servers
(``OLLAMA_BASE_URL`` / ``OPENAI_BASE_URL`` with commas) are one backend per server behind a
:class:`~llmserve.backends.pool.BackendPool`, which routes and fails over between them.
"""

from __future__ import annotations

import httpx

from llmserve.backends.base import Backend
from llmserve.settings import Settings


def create_backend(settings: Settings, client: httpx.AsyncClient) -> Backend:
    """The configured backend. ``client`` is the runtime's shared HTTP client."""
    urls = settings.backend_urls
    if len(urls) > 1:
        return _pool(settings, urls, client)
    if settings.LLM_BACKEND == "ollama":
        return _ollama(settings, client)
    if settings.LLM_BACKEND == "openai":
        assert settings.OPENAI_BASE_URL, "Settings.check_backend() guarantees this"
        return _openai(settings, settings.OPENAI_BASE_URL, client)
    from llmserve.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.EMBEDDED_MODEL_PATH, settings.EMBEDDED_MODELS_DIR)


def _ollama(settings: Settings, client: httpx.AsyncClient) -> Backend:
    from llmserve.backends.ollama import OllamaBackend

    assert settings.BUILT_IN_OLLAMA_MODEL, "Settings.check_backend() guarantees this"
    return OllamaBackend(
        client,
        settings.BUILT_IN_OLLAMA_MODEL,
        first_token_timeout_s=settings.FIRST_TOKEN_TIMEOUT_S,
        idle_timeout_s=settings.TOKEN_IDLE_TIMEOUT_S,
        total_timeout_s=settings.REQUEST_TIMEOUT_S,
    )


def _openai(settings: Settings, base_url: str, client: httpx.AsyncClient) -> Backend:
    from llmserve.backends.openai import OpenAIBackend

    return OpenAIBackend(
        base_url,
        settings.OPENAI_API_KEY,
        client,
        first_token_timeout_s=settings.FIRST_TOKEN_TIMEOUT_S,
        idle_timeout_s=settings.TOKEN_IDLE_TIMEOUT_S,
    )


def _pool(settings: Settings, urls: list[str], client: httpx.AsyncClient) -> Backend:
    """One backend per server: Ollama's each with its own client (its base URL is the
    server's), the OpenAI-compatible ones sharing ``client`` (they send absolute URLs)."""
    from llmserve.backends.pool import BackendPool

    members: list[tuple[str, Backend]] = []
    owned: list[httpx.AsyncClient] = []
    for url in urls:
        if settings.LLM_BACKEND == "ollama":
            own = _client(settings, url)
            owned.append(own)
            members.append((url, _ollama(settings, own)))
        else:
            members.append((url, _openai(settings, url, client)))
    return BackendPool(
        members,
        per_server=settings.MAX_CONCURRENT_GENERATIONS,
        queue_timeout_s=settings.QUEUE_TIMEOUT_S,
        health_interval_s=settings.BACKEND_HEALTH_INTERVAL_S,
        probe_timeout_s=settings.BACKEND_CONNECT_TIMEOUT_S + 5.0,
        clients=owned,
    )


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The one shared HTTP client for the backend: pooled, with the configured connect timeout
    (its base URL is the first server's)."""
    urls = settings.backend_urls or [settings.OLLAMA_BASE_URL.split(",")[0]]
    return _client(settings, urls[0])


def _client(settings: Settings, base_url: str) -> httpx.AsyncClient:
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
