"""The request-log writer: generation rows reach the database off the hot path.

``record()`` is called on the event loop at the end of every generation and only appends to a
bounded in-memory buffer. A worker thread writes batches. When the database is down the rows
stay buffered (up to ``capacity``; beyond that they are dropped and counted) and are written when
it returns. ``stop()`` flushes what is pending, so nothing is lost on a clean shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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


class RequestLogWriter:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        capacity: int = 10_000,
        batch_size: int = 500,
        retry_s: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._capacity = capacity
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._pending: list[RequestLogRow] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
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
            if len(self._pending) >= self._capacity:
                self.dropped += 1
                dropped = True
            else:
                self._pending.append(row)
                dropped = False
        if dropped:
            log.warning("request log buffer full (%d rows); a row was dropped", self._capacity)
            if self.on_drop is not None:
                self.on_drop(1)
        else:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush pending rows (retrying for up to ``timeout`` seconds) and stop the worker."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
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
                    repositories.insert_request_logs(session, (asdict(row) for row in batch))
            except Exception as exc:  # noqa: BLE001 - any database failure: retry later
                log.warning("request log: database unavailable, %d rows kept (%s)", len(batch), exc)
                return False
            with self._lock:
                del self._pending[: len(batch)]
            self.written += len(batch)
