"""The stored active model: concurrent switches never tear or lose the row (last writer wins)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from llmserve.db import repositories
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import SettingRecord


def test_concurrent_writers_leave_exactly_one_complete_row(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessions(engine)
    names = [f"model-{i}:latest" for i in range(40)]

    def write(name: str) -> None:
        with sessions.begin() as session:
            repositories.set_setting(session, repositories.ACTIVE_MODEL_KEY, name)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, names))  # the first writes race to insert the row
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(SettingRecord)) == 1
        final = repositories.get_setting(session, repositories.ACTIVE_MODEL_KEY)
    assert final in names
    write("last:latest")
    with sessions() as session:
        assert repositories.get_setting(session, repositories.ACTIVE_MODEL_KEY) == "last:latest"
    engine.dispose()
