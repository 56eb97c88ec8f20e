"""Helpers for the OpenAI-compatible API tests (the fixtures come from the root conftest)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from llmserve.api.app import create_app
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from llmserve.settings import Settings
from tests.fakes.ollama_double import OllamaDouble

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@contextlib.contextmanager
def app_client(settings: Settings, **overrides: object) -> Iterator[TestClient]:
    """The app in this process (its lifespan runs), settings differing by ``overrides``."""
    with TestClient(create_app(settings.model_copy(update=overrides))) as client:
        yield client


def log_rows(db_url: str, count: int = 0, timeout: float = 5.0) -> list[RequestLogRecord]:
    """The request log, waiting up to ``timeout`` until it has ``count`` rows."""
    engine = make_engine(db_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with make_sessions(engine)() as session:
                rows = list(session.scalars(select(RequestLogRecord).order_by(RequestLogRecord.id)))
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        engine.dispose()


def sse_data(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (comments and event names dropped)."""
    return [line[len("data: ") :] for line in body.split("\n") if line.startswith("data: ")]


def sse_json(body: str) -> list[Any]:
    """The JSON ``data:`` payloads; ``[DONE]`` is returned as the string ``"[DONE]"``."""
    return [data if data == "[DONE]" else json.loads(data) for data in sse_data(body)]


def sent_to_ollama(ollama: OllamaDouble) -> list[dict[str, Any]]:
    """The bodies of the ``/api/chat`` requests the double received."""
    return [r.json for r in ollama.requests if r.path == "/api/chat"]


def tags_requests(ollama: OllamaDouble) -> int:
    return sum(1 for r in ollama.requests if r.path == "/api/tags")
