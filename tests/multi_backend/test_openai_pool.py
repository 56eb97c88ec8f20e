"""Several OpenAI-compatible servers: llama-cpp-python's real server (the one the openai backend
tests start, on the real 270M model) and a server that is down, in one pool built from the
settings as the runtime builds it."""

from __future__ import annotations

import pytest

from llmserve.backends.factory import create_backend, http_client
from llmserve.backends.pool import BackendPool
from llmserve.domain import GenerationOptions, GenerationRequest
from llmserve.settings import load_settings
from tests._server import free_port
from tests.backends.test_openai_backend import ALIAS, API_KEY, server_url

__all__ = ["server_url"]  # the module's fixture: llama_cpp.server on a free port

pytestmark = [pytest.mark.embedded, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_openai_pool_routes_around_a_dead_server(server_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(
        env_file=None,
        LLM_BACKEND="openai",
        OPENAI_BASE_URL=f"{dead}, {server_url}/v1",
        OPENAI_API_KEY=API_KEY,
        BACKEND_HEALTH_INTERVAL_S=0.5,
    )
    client = http_client(settings)
    pool = create_backend(settings, client)
    assert isinstance(pool, BackendPool)
    try:
        await pool.start()
        assert pool.built_in_model == ALIAS
        dead_server, live = pool.servers
        assert (dead_server.url, live.url) == (dead, f"{server_url}/v1")
        assert not dead_server.up and live.up
        (model,) = await pool.list_models()
        assert (model.name, model.backends) == (ALIAS, (live.url,))
        options = GenerationOptions(max_tokens=8)
        request = GenerationRequest.from_prompt("Why is the sky blue?", options=options)
        stream = await pool.open_generation(ALIAS, request)
        assert live.in_flight == 1
        try:
            pieces = [piece async for piece in stream]
        finally:
            await stream.aclose()
        assert stream.result is not None, pieces  # it ran to its end there
        assert live.generations == 1 and live.in_flight == 0
    finally:
        await pool.aclose()
        await client.aclose()
