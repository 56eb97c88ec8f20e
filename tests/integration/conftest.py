"""In-process app fixtures (the app's lifespan runs; the HTTP client is Starlette's TestClient)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from llmserve.api.app import create_app
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from llmserve.services.keys import KeyService
from llmserve.settings import Settings


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Build a client for an app whose settings differ from the default ones by ``overrides``."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        app = create_app(settings.model_copy(update=overrides))
        client = TestClient(app, raise_server_exceptions=True)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def keys(db_url: str) -> KeyService:
    """The API keys of the test database (create them as the CLI does)."""
    return KeyService(make_sessions(make_engine(db_url)))


@pytest.fixture
def secured(make_client: Callable[..., TestClient]) -> TestClient:
    """A client of an app with AUTH_REQUIRED=true."""
    return make_client(AUTH_REQUIRED=True)


@pytest.fixture
def log_rows(db_url: str) -> Callable[[], list[RequestLogRecord]]:
    """Read the request log (after the app flushed it: close the client first or wait)."""

    def read() -> list[RequestLogRecord]:
        engine = make_engine(db_url)
        try:
            with make_sessions(engine)() as session:
                return list(session.scalars(select(RequestLogRecord).order_by(RequestLogRecord.id)))
        finally:
            engine.dispose()

    return read
