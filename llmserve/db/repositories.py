"""Every SQL statement llmserve runs. Functions take a Session; callers own the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, text, update
from sqlalchemy.orm import Session

from llmserve.db.tables import ApiKeyRecord, AuditRecord, RequestLogRecord, SettingRecord, utcnow

ACTIVE_MODEL_KEY = "active_model"


def get_setting(session: Session, key: str) -> str | None:
    return session.scalar(select(SettingRecord.value).where(SettingRecord.key == key))


def set_setting(session: Session, key: str, value: str) -> None:
    """Insert or update one setting in one statement; concurrent writers: the last one wins."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    now = utcnow()
    statement = upsert(SettingRecord).values(key=key, value=value, updated_at=now)
    statement = statement.on_conflict_do_update(
        index_elements=[SettingRecord.key], set_={"value": value, "updated_at": now}
    )
    session.execute(statement)


def insert_request_logs(session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    if rows:
        session.execute(insert(RequestLogRecord), rows)


def latest_request_logs(session: Session, limit: int = 50) -> list[RequestLogRecord]:
    query = select(RequestLogRecord).order_by(RequestLogRecord.id.desc()).limit(limit)
    return list(session.scalars(query))


def insert_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    session.add(
        AuditRecord(
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            detail=detail,
            created_at=at or utcnow(),
        )
    )


def ping(session: Session) -> None:
    session.execute(text("SELECT 1"))


def schema_revision(session: Session) -> str | None:
    """The Alembic revision the database is at, or None when it was never migrated."""
    try:
        return session.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception:  # noqa: BLE001 - a missing table means "not migrated"
        session.rollback()
        return None


def add_api_key(session: Session, record: ApiKeyRecord) -> ApiKeyRecord:
    session.add(record)
    session.flush()
    return record


def api_key_named(session: Session, name: str) -> ApiKeyRecord | None:
    return session.scalar(select(ApiKeyRecord).where(ApiKeyRecord.name == name))


def api_key_by_prefix(session: Session, prefix: str) -> ApiKeyRecord | None:
    return session.scalar(select(ApiKeyRecord).where(ApiKeyRecord.prefix == prefix))


def api_key_by_name_or_prefix(session: Session, ident: str) -> ApiKeyRecord | None:
    query = select(ApiKeyRecord).where(
        or_(ApiKeyRecord.name == ident, ApiKeyRecord.prefix == ident)
    )
    return session.scalar(query)


def all_api_keys(session: Session) -> list[ApiKeyRecord]:
    return list(session.scalars(select(ApiKeyRecord).order_by(ApiKeyRecord.id)))


def touch_api_keys(session: Session, last_used: Mapping[int, datetime]) -> None:
    """Record when keys were last used (one UPDATE per key, batched by the caller)."""
    for key_id, at in last_used.items():
        session.execute(
            update(ApiKeyRecord).where(ApiKeyRecord.id == key_id).values(last_used_at=at)
        )
