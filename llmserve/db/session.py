"""Engine and session factories. Built by the runtime, never at import time."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from sqlalchemy import ClauseElement, Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (already normalised by Settings)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the server read while another process (the CLI) writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": 5},
    )


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def compiled(engine: Engine, statement: ClauseElement) -> str:
    """``statement`` as SQL text for ``engine``'s dialect, its values written in (only for
    statements whose values are the program's own constants, never user input)."""
    return str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


class HeldConnection:
    """One autocommit connection kept open for a background poller.

    A poll through a session pays a pool checkout, a pre-ping and a BEGIN/ROLLBACK around its
    one SELECT: four round trips, ~2 ms of CPU, four times a second per server for the active
    model and the keys. Held open, a poll is its one statement. On any error the connection is
    dropped and the next poll opens a new one, so an outage costs nothing after recovery.
    Thread-safe: polls may run on any worker thread, one at a time.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Connection], T]) -> T:
        with self._lock:
            if self._connection is None:
                connection = self._engine.connect()
                self._connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            try:
                return work(self._connection)
            except BaseException:
                self._drop()
                raise

    def first_row(self, sql: str) -> tuple[Any, ...] | None:
        """The first row of ``sql`` (see :func:`compiled`), run on the driver's own cursor.

        SQLAlchemy's execute costs ~200 µs of CPU per statement even on a held connection (the
        driver's cursor: ~15 µs); a poll that runs four times a second per server is all
        overhead, so it skips that layer.
        """

        def fetch(connection: Connection) -> tuple[Any, ...] | None:
            dbapi = connection.connection.dbapi_connection
            assert dbapi is not None  # a checked-out connection holds its driver's
            cursor = dbapi.cursor()
            try:
                cursor.execute(sql)
                return cursor.fetchone()
            except (psycopg.Error, sqlite3.Error) as exc:
                # The driver's own error, as SQLAlchemy's: callers catch SQLAlchemyError.
                raise OperationalError(sql, None, exc) from exc
            finally:
                cursor.close()

        return self.run(fetch)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
            with contextlib.suppress(Exception):
                connection.close()
