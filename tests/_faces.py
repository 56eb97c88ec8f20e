"""Fixtures of the test folders for the API faces over the conversation core (``tests/anthropic``,
``tests/responses``; their conftest imports these): one ``llmserve serve`` for the module (auth
off, short pings), wired to the session's database and Ollama double; each test gets the double
reset (the root ``ollama`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble
from tests.faults._tools import server_env

#: Pings every 0.3 s, so a test can see one while the double is quiet.
PING_INTERVAL_S = 0.3


@pytest.fixture(scope="module")
def module_server(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = server_env(database_url, ollama_server.base_url, SSE_PING_INTERVAL_S=PING_INTERVAL_S)
    with running_server(env, tmp_path_factory.mktemp("faces")) as server:
        yield server
        assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def server(module_server: ServerProcess, ollama: OllamaDouble) -> ServerProcess:
    """The module's server, with the Ollama double reset for this test."""
    return module_server
