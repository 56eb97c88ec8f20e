"""The request-log writer: off the hot path, buffered while the database is away, flushed."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from llmserve.db import migrate
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from llmserve.services.request_log import RequestLogRow, RequestLogWriter


def _row(i: int = 0) -> RequestLogRow:
    return RequestLogRow(
        created_at=datetime.now(UTC), route="/t", model="m", status="ok", duration_ms=float(i)
    )


def _count(sessions) -> int:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(RequestLogRecord)))


def test_rows_are_written_in_the_background(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessions(engine)
    writer = RequestLogWriter(sessions)
    writer.start()
    for i in range(50):
        writer.record(_row(i))
    deadline = time.monotonic() + 5
    while _count(sessions) < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.stop()
    assert _count(sessions) == 50
    engine.dispose()


def test_stop_flushes_what_is_pending(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessions(engine)
    writer = RequestLogWriter(sessions)  # never started: only stop() can write these
    for i in range(3):
        writer.record(_row(i))
    writer.stop()
    assert _count(sessions) == 3
    engine.dispose()


def test_rows_wait_for_the_database_and_overflow_is_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'late.db'}"
    engine = make_engine(url)
    sessions = make_sessions(engine)
    writer = RequestLogWriter(sessions, capacity=5, retry_s=0.05)
    writer.start()
    for i in range(7):  # the table does not exist yet: the database "is down"
        writer.record(_row(i))
    time.sleep(0.2)
    assert writer.pending == 5
    assert writer.dropped == 2
    migrate.upgrade(url)  # the database "comes back"
    deadline = time.monotonic() + 5
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.stop()
    assert _count(sessions) == 5
    engine.dispose()
