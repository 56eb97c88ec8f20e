"""The request-log writer: generation rows reach the database off the hot path.

``record()`` is called on the event loop at the end of every generation and only appends to a
bounded in-memory buffer (waking the worker only for the first row of a batch). A worker thread
writes batches: after the first row it lingers ``linger_s`` (or until ``batch_size`` rows) so
that one transaction carries many rows. When the database is down the rows
stay buffered (up to ``capacity``; beyond that they are dropped and counted) and are written when
it returns. ``stop()`` flushes what is pending, so nothing is lost on a clean shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from llmserve.db import repositories

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestLogRow:
    created_at: datetime
    route: str
    model: str
    status: str  # ok | error | cancelled | timeout | rejected
    duration_ms: float
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    ttft_ms: float | None = None
    error: str | None = None
    request_id: str | None = None
    api_key_id: int | None = None
    prompt: str | None = None
    response: str | None = None
    tool_calls: str | None = None  # names of the calls the answer held, comma-separated
    response_format: str | None = None  # json | json_schema | tool_call (None: text)


_FIELDS = tuple(field.name for field in fields(RequestLogRow))


def _as_dict(row: RequestLogRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in _FIELDS}  # asdict() deep-copies: slow


class RequestLogWriter:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        capacity: int = 10_000,
        batch_size: int = 500,
        retry_s: float = 1.0,
        linger_s: float = 0.2,
    ) -> None:
        self._sessions = sessions
        self._capacity = capacity
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._linger_s = linger_s
        self._pending: list[RequestLogRow] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a full batch, or stop(): end the linger now
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.on_drop: Callable[[int], None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def record(self, row: RequestLogRow) -> None:
        """Queue one row; never blocks on I/O."""
        with self._lock:
            pending = len(self._pending)
            if pending >= self._capacity:
                self.dropped += 1
            else:
                self._pending.append(row)
        if pending >= self._capacity:
            log.warning("request log buffer full (%d rows); a row was dropped", self._capacity)
            if self.on_drop is not None:
                self.on_drop(1)
        elif pending == 0:
            self._wake.set()  # the first row of a batch; the worker takes every later one too
        elif pending + 1 == self._batch_size:
            self._urgent.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush pending rows (retrying for up to ``timeout`` seconds) and stop the worker."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._urgent.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            self._thread = None
        elif self._pending:
            self._flush()  # never started (or already gone): flush from the caller's thread
        if self._pending:
            log.error("request log: %d rows could not be written at shutdown", len(self._pending))

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if not self._stopping and len(self._pending) < self._batch_size:
                # Let a batch gather: one transaction for many rows, not one per request.
                self._urgent.wait(timeout=self._linger_s)
            self._urgent.clear()
            written = self._flush()
            if self._stopping and (written or time.monotonic() > self._stop_deadline):
                return
            if not written:
                # Sleep before retrying, but wake at once for a stop.
                self._wake.wait(timeout=self._retry_s)

    def _flush(self) -> bool:
        """Write everything pending in batches; False if the database refused."""
        while True:
            with self._lock:
                batch = self._pending[: self._batch_size]
            if not batch:
                return True
            try:
                with self._sessions.begin() as session:
                    repositories.insert_request_logs(session, (_as_dict(row) for row in batch))
            except Exception as exc:  # noqa: BLE001 - any database failure: retry later
                log.warning("request log: database unavailable, %d rows kept (%s)", len(batch), exc)
                return False
            with self._lock:
                del self._pending[: len(batch)]
            self.written += len(batch)
