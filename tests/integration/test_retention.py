"""The server applies REQUEST_LOG_RETENTION_DAYS at startup (and hourly)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from llmserve.db import repositories
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord


def _seed(db_url: str) -> None:
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    with make_sessions(engine).begin() as session:
        repositories.insert_request_logs(
            session,
            [
                {
                    "created_at": now - timedelta(days=age),
                    "route": "/t",
                    "model": "m",
                    "status": "ok",
                    "duration_ms": 1.0,
                    "completion_tokens": 0,
                }
                for age in (0, 1, 9, 40)
            ],
        )
    engine.dispose()


def _count(db_url: str) -> int:
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        count = session.scalar(select(func.count()).select_from(RequestLogRecord))
    engine.dispose()
    return int(count or 0)


def test_old_rows_are_pruned_by_the_server(
    db_url: str, make_client: Callable[..., TestClient]
) -> None:
    _seed(db_url)
    make_client(REQUEST_LOG_RETENTION_DAYS=7)
    deadline = time.monotonic() + 5
    while _count(db_url) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(db_url) == 2


def test_zero_keeps_everything(db_url: str, make_client: Callable[..., TestClient]) -> None:
    _seed(db_url)
    make_client(REQUEST_LOG_RETENTION_DAYS=0)
    time.sleep(0.3)
    assert _count(db_url) == 4
