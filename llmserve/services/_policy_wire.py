"""The key policy's PostgreSQL connection, driven from the event loop with libpq's
non-blocking calls.

A statement sent from a worker thread costs the server far more than its round trip: while the
event loop holds the interpreter, the thread waits for it after every socket wait, and each of
those hand-overs is a forced switch of both threads. Measured with ``benchmarks/policy_cost.py``
(see benchmarks/README.md), the worker thread spent ~115 µs of CPU per request and the loop's
thread about as much again. Here the loop sends the statement and reads the answer as it does
any socket's: one send, one wake-up, one read.

Assumptions, each checked by tests/integration/test_policy_wire.py:

* the connection is in autocommit, so every statement is its own transaction and the connection
  is idle between statements (nothing is left open across a batch);
* libpq is in non-blocking mode, so a statement larger than the socket's buffer is written as
  the socket drains, never by blocking the loop;
* a statement cancelled before its answer (the caller's timeout: a database that fell silent)
  leaves the connection in an unknown state, so the caller drops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import pq


class PolicyWire:
    """One connection (``raw``, SQLAlchemy's pool proxy) in autocommit, used only from the
    event loop, one statement at a time (the caller serialises them)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        driver: psycopg.Connection[Any] = raw.driver_connection
        self._pg: pq.abc.PGconn = driver.pgconn
        self._pg.nonblocking = 1
        self._fd = self._pg.socket

    async def value(self, statement: bytes, params: Sequence[bytes | None]) -> Any:
        """Run ``statement`` (``$1``… parameters, text format) and return the first column of
        its first row as bytes (None: no row, or a statement without rows). A database error
        raises psycopg's class for its SQLSTATE (``DeadlockDetected``…); a lost connection
        raises ``psycopg.OperationalError``. Cancelled (a timeout) mid-statement, the
        connection must not be used again."""
        pg, loop = self._pg, asyncio.get_running_loop()
        pg.send_query_params(statement, params)
        while pg.flush():  # 1: part of it is still in libpq's buffer
            await _ready(self._fd, loop.add_writer, loop.remove_writer)
        results: list[pq.abc.PGresult] = []
        while True:
            await _ready(self._fd, loop.add_reader, loop.remove_reader)
            pg.consume_input()
            while not pg.is_busy():
                result = pg.get_result()
                if result is None:
                    return _first_value(results)
                results.append(result)


def _first_value(results: list[pq.abc.PGresult]) -> Any:
    for result in results:
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise psycopg.errors.error_from_result(result, encoding="utf-8")
    first = results[0] if results else None
    if first is None or first.status != pq.ExecStatus.TUPLES_OK or first.ntuples == 0:
        return None
    return first.get_value(0, 0)


async def _ready(
    fd: int,
    add: Callable[..., Any],
    remove: Callable[[int], Any],
) -> None:
    """Wait until ``fd`` is readable (``add_reader``) or writable (``add_writer``)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    add(fd, wake)
    try:
        await future
    finally:
        remove(fd)
