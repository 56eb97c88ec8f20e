"""PostgreSQL goes away while ``llmserve serve`` generates.

The server reaches the database through a :class:`TcpProxy`; cutting the proxy closes every
connection and refuses new ones, which is what a stopped or unreachable PostgreSQL looks like.
The tests read the rows straight from the database, past the proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import TcpProxy, generate, metric, row_count, rows, server_env

BUFFER = 5
SWITCHED = "qwen2.5:0.5b"


@pytest.fixture(scope="module")
def proxy_and_server(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TcpProxy, ServerProcess]]:
    with TcpProxy.for_database(database_url) as (proxy, proxied_url):
        env = server_env(
            proxied_url,
            ollama_server.base_url,
            REQUEST_LOG_BUFFER=BUFFER,
            ACTIVE_MODEL_REFRESH_S=0.2,
        )
        with running_server(env, tmp_path_factory.mktemp("database-faults"), warm=True) as server:
            yield proxy, server


@pytest.fixture
def proxy(proxy_and_server: tuple[TcpProxy, ServerProcess]) -> Iterator[TcpProxy]:
    proxy = proxy_and_server[0]
    yield proxy
    proxy.restore()  # even when the test failed half-way


@pytest.fixture
def server(
    proxy_and_server: tuple[TcpProxy, ServerProcess], db_url: str, ollama: OllamaDouble
) -> ServerProcess:
    return proxy_and_server[1]


def _ready(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.base_url + "/ready", timeout=10)


def _wait_ready(server: ServerProcess, status: int, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (response := _ready(server)).status_code != status and time.monotonic() < deadline:
        time.sleep(0.1)
    return response


def test_generation_continues_on_the_cached_model_and_no_row_is_lost(
    server: ServerProcess, proxy: TcpProxy, ollama: OllamaDouble, db_url: str
) -> None:
    switched = httpx.post(server.base_url + f"/api/v1/models/switch/{SWITCHED}", timeout=10)
    assert switched.status_code == 200
    assert generate(server.base_url, stream=True).completed
    assert len(rows(db_url, 1)) == 1

    proxy.cut()
    not_ready = _wait_ready(server, 503)
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["database"] != "ok"
    time.sleep(0.5)  # a few failed refreshes of the active model: it must keep the cached value

    ollama.enqueue(Script(), Script(), Script(status=500), Script(tokens=["a", "b"], cut_after=1))
    outcomes = [generate(server.base_url, stream=stream) for stream in (True, False, False, True)]
    assert outcomes[0].completed
    assert outcomes[1].status == 200 and outcomes[1].json()["response"] == "Hello, world!"
    assert outcomes[2].status == 502
    assert outcomes[3].status == 200 and outcomes[3].events[-1].name == "error"
    assert [g.model for g in ollama.generations[-4:]] == [SWITCHED] * 4
    assert row_count(db_url) == 1  # buffered in the server, not written
    assert _ready(server).status_code == 503

    proxy.restore()
    assert _wait_ready(server, 200).status_code == 200
    logged = rows(db_url, 5)
    time.sleep(0.5)  # would a row be written twice?
    assert row_count(db_url) == 5
    assert [row.status for row in logged] == ["ok", "ok", "ok", "error", "error"]
    assert {row.request_id for row in logged[1:]} == {o.request_id for o in outcomes}
    assert all(row.model == SWITCHED for row in logged)


def test_rows_beyond_the_buffer_are_dropped_and_counted(
    server: ServerProcess, proxy: TcpProxy, db_url: str
) -> None:
    dropped_before = metric(server.base_url, "llmserve_request_log_dropped_rows_total")
    proxy.cut()
    assert _wait_ready(server, 503).status_code == 503
    extra = 3
    for _ in range(BUFFER + extra):
        assert generate(server.base_url, stream=False).status == 200
    dropped = metric(server.base_url, "llmserve_request_log_dropped_rows_total")
    assert dropped - dropped_before == extra
    assert "request log buffer full" in server.log()

    proxy.restore()
    rows(db_url, BUFFER)
    time.sleep(0.5)
    assert row_count(db_url) == BUFFER
