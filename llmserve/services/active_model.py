"""The active model: stored in the database, read from memory.

Every replica and the CLI agree because the value lives in the ``settings`` table. Serving
processes keep it in memory and refresh it in the background every ``refresh_s`` seconds (one
single-row SELECT on a connection held open for it), so a switch made anywhere is honoured
within about ``refresh_s`` and a generation never pays a database round trip to learn which
model to use. When the database is unreachable the last known value keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.orm import Session, sessionmaker

from llmserve.db import repositories
from llmserve.db.session import HeldConnection, compiled

log = logging.getLogger(__name__)


class ActiveModelService:
    def __init__(
        self, sessions: sessionmaker[Session], default_model: str, refresh_s: float = 0.5
    ) -> None:
        self._sessions = sessions
        engine = sessions.kw["bind"]
        self._poll = HeldConnection(engine)
        self._query = compiled(engine, repositories.setting_query(repositories.ACTIVE_MODEL_KEY))
        self._default = default_model
        self._refresh_s = refresh_s
        self._current = default_model
        self._task: asyncio.Task[None] | None = None
        self.database_ok = False
        self._local_writes = 0

    @property
    def current(self) -> str:
        """The active model as last read (no I/O)."""
        return self._current

    @property
    def default(self) -> str:
        return self._default

    def set_local(self, model: str) -> None:
        """This process switched the model (and stored it): use it at once."""
        if model != self._current:
            log.info("active model is now %r", model)
        self._current = model
        self._local_writes += 1

    async def start(self, *, follow: bool = True) -> None:
        """Read the stored value once; with ``follow``, keep refreshing in the background."""
        await self.refresh()
        if follow:
            self._task = asyncio.create_task(self._follow(), name="active-model-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._poll.close()

    async def refresh(self) -> str:
        writes_before = self._local_writes
        try:
            stored = await asyncio.to_thread(self._read)
        except Exception as exc:  # noqa: BLE001 - keep serving the last known value
            if self.database_ok:
                log.warning(
                    "active model: database unavailable, keeping %r (%s)", self._current, exc
                )
            self.database_ok = False
            return self._current
        self.database_ok = True
        if self._local_writes != writes_before:
            return self._current  # a switch in this process landed while we were reading
        value = stored or self._default
        if value != self._current:
            log.info("active model is now %r", value)
            self._current = value
        return value

    def _read(self) -> str | None:
        row = self._poll.first_row(self._query)
        return row[0] if row is not None else None

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()
