"""The stored active model: concurrent switches never tear or lose the row (last writer wins)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from llmserve.db import migrate, repositories
from llmserve.db.session import HeldConnection, compiled, make_engine, make_sessions
from llmserve.db.tables import SettingRecord
from llmserve.services.keys import KeyService


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


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_polls_driver_level_reads_follow_writes_on_both_databases(
    dialect: str, db_url: str, tmp_path: Path
) -> None:
    """The background polls' statements, compiled once and run on the driver's cursor, read what
    the ORM writes: the active model, and a key fingerprint that changes on create, revoke and
    a change of the key's limits."""
    url = db_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'poll.db'}"
    if dialect == "sqlite":
        migrate.upgrade(url)
    engine = make_engine(url)
    sessions = make_sessions(engine)
    held = HeldConnection(engine)
    setting = compiled(engine, repositories.setting_query(repositories.ACTIVE_MODEL_KEY))
    fingerprint = compiled(engine, repositories.api_keys_fingerprint_query())
    try:
        assert held.first_row(setting) is None
        assert tuple(held.first_row(fingerprint) or ()) == (0, 0, 0, 0)
        with sessions.begin() as session:
            repositories.set_setting(session, repositories.ACTIVE_MODEL_KEY, "qwen2.5:0.5b")
        assert held.first_row(setting) == ("qwen2.5:0.5b",)
        keys = KeyService(sessions)
        _, record = keys.create("poller", actor="test")
        assert tuple(held.first_row(fingerprint) or ()) == (1, record.id, 0, 0)
        keys.update("poller", changes={"rpm": 5}, actor="test")
        assert tuple(held.first_row(fingerprint) or ()) == (1, record.id, 0, 1)
        keys.revoke("poller", actor="test")
        assert tuple(held.first_row(fingerprint) or ()) == (1, record.id, 1, 1)
    finally:
        held.close()
        engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_driver_error_in_a_poll_is_sqlalchemys(dialect: str, db_url: str, tmp_path: Path) -> None:
    """The polls' callers (the key and active-model followers) catch SQLAlchemy's errors: a
    statement run on the driver's own cursor must fail as one of them, not as the driver's (a
    key follower that died on psycopg's error stopped following revocations for good)."""
    url = db_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'poll.db'}"
    engine = make_engine(url)
    held = HeldConnection(engine)
    try:
        with pytest.raises(SQLAlchemyError):
            held.first_row("SELECT no_such_column FROM no_such_table")
        assert held.first_row("SELECT 1") == (1,)  # a new connection after the failure
    finally:
        held.close()
        engine.dispose()
