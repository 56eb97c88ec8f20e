"""Every SQL statement llmserve runs. Functions take a Session; callers own the transaction."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    CursorResult,
    Executable,
    Row,
    Select,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from llmserve.db.tables import (
    ApiKeyRecord,
    AuditRecord,
    KeyLeaseRecord,
    KeyUsageRecord,
    RequestLogRecord,
    SettingRecord,
    utcnow,
)

ACTIVE_MODEL_KEY = "active_model"


def setting_query(key: str) -> Select[str]:
    return select(SettingRecord.value).where(SettingRecord.key == key)


def get_setting(session: Session | Connection, key: str) -> str | None:
    return session.scalar(setting_query(key))


def set_setting(session: Session, key: str, value: str) -> None:
    """Insert or update one setting in one statement; concurrent writers: the last one wins."""
    now = utcnow()
    row = {"key": key, "value": value, "updated_at": now}
    changes = {"value": value, "updated_at": now}
    keys = [SettingRecord.key]
    statement: Executable
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(SettingRecord).values(row)
        statement = statement.on_conflict_do_update(index_elements=keys, set_=changes)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(SettingRecord).values(row)
        statement = statement.on_conflict_do_update(index_elements=keys, set_=changes)
    session.execute(statement)


def insert_request_logs(session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append request-log rows. On PostgreSQL one ``COPY`` per batch (the cheapest bulk path:
    no statement per row; it bypasses the columns' defaults, so they are repeated here);
    elsewhere a Core ``executemany``."""
    rows = list(rows)
    if not rows:
        return
    table = RequestLogRecord.__table__
    assert isinstance(table, Table)  # a mapped class's table: narrows FromClause for the checker
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(table), rows)
        return
    columns = [column.name for column in table.columns if not column.primary_key]
    copy_sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    driver = session.connection().connection.driver_connection
    assert driver is not None  # a checked-out connection holds its driver's
    cursor = driver.cursor()
    with cursor, cursor.copy(copy_sql) as copy:
        defaults = {"completion_tokens": 0, "created_at": utcnow()}
        for row in rows:
            copy.write_row([row.get(c, defaults.get(c)) for c in columns])


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
        revision: str | None = session.scalar(text("SELECT version_num FROM alembic_version"))
        return revision
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


def api_key_rows(connection: Connection) -> list[Row[Any]]:
    """Every key as plain rows (the server's cache; no ORM objects)."""
    table = ApiKeyRecord.__table__
    return list(connection.execute(select(table).order_by(table.c.id)))


def api_keys_fingerprint_query() -> Select[tuple[int, int, int, int]]:
    """Changes whenever a key is created, deleted, revoked or its policy changes: (count,
    highest id, revoked, policy versions)."""
    table = ApiKeyRecord.__table__
    return select(
        func.count(),
        func.coalesce(func.max(table.c.id), 0),
        func.count(table.c.revoked_at),
        func.coalesce(func.sum(table.c.policy_version), 0),
    )


def touch_api_keys(session: Session, last_used: Mapping[int, datetime]) -> None:
    """Record when keys were last used (one UPDATE per key, batched by the caller)."""
    for key_id, at in last_used.items():
        session.execute(
            update(ApiKeyRecord).where(ApiKeyRecord.id == key_id).values(last_used_at=at)
        )


# -- Request log: listing, usage statistics, retention (``llmserve logs`` and ``stats``) ----------

#: Statuses counted as errors in usage statistics.
ERROR_STATUSES = ("error", "timeout")


def recent_request_logs(
    session: Session,
    *,
    limit: int,
    status: str | None = None,
    since: datetime | None = None,
    model: str | None = None,
) -> list[tuple[RequestLogRecord, str | None]]:
    """The newest rows first, each with its API key's name (None for rows without a key).

    Ordered by ``created_at`` so that an index serves every filter (``created_at``,
    ``(status, created_at)``, ``(model, created_at)``) and the scan stops after ``limit`` rows;
    ``id`` only breaks ties.
    """
    log = RequestLogRecord
    query = (
        select(log, ApiKeyRecord.name)
        .outerjoin(ApiKeyRecord, ApiKeyRecord.id == log.api_key_id)
        .order_by(log.created_at.desc(), log.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(log.status == status)
    if since is not None:
        query = query.where(log.created_at >= since)
    if model is not None:
        query = query.where(log.model == model)
    return [(record, name) for record, name in session.execute(query)]


def request_log_stats(
    session: Session, *, since: datetime, by: Literal["model", "key"]
) -> list[dict[str, Any]]:
    """Usage per model or per API key over the rows created at or after ``since``.

    One dict per group: ``group`` (the model, or the key's name: None for rows without a key),
    ``api_key_id`` (by key only), ``requests``, ``errors`` (status error or timeout),
    ``cancelled``, ``rejected``, ``prompt_tokens``, ``completion_tokens`` and ``ttft_p50``,
    ``ttft_p95``, ``duration_p50``, ``duration_p95`` in ms, taken over the ``ok`` rows (None when
    the group has none). PostgreSQL computes everything in one statement (``percentile_cont``);
    SQLite has no percentiles, so they are computed here from the window's ``ok`` rows, with the
    same interpolation — fine at the embedded scale SQLite serves.
    """
    log = RequestLogRecord
    ok = log.status == "ok"
    if by == "model":
        keys: list[Any] = [log.model.label("group")]
        group_by: list[Any] = [log.model]
    else:
        keys = [log.api_key_id.label("api_key_id"), ApiKeyRecord.name.label("group")]
        group_by = [log.api_key_id, ApiKeyRecord.name]
    columns: list[Any] = [
        func.count().label("requests"),
        func.count().filter(log.status.in_(ERROR_STATUSES)).label("errors"),
        func.count().filter(log.status == "cancelled").label("cancelled"),
        func.count().filter(log.status == "rejected").label("rejected"),
        func.coalesce(func.sum(log.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(log.completion_tokens), 0).label("completion_tokens"),
    ]
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        for name, column in (("ttft", log.ttft_ms), ("duration", log.duration_ms)):
            for percent in (50, 95):
                percentile = func.percentile_cont(percent / 100).within_group(column).filter(ok)
                columns.append(percentile.label(f"{name}_p{percent}"))
    query = select(*keys, *columns).select_from(log).where(log.created_at >= since)
    if by == "key":
        query = query.outerjoin(ApiKeyRecord, ApiKeyRecord.id == log.api_key_id)
    rows = [dict(row._mapping) for row in session.execute(query.group_by(*group_by))]
    if not postgres:
        _add_percentiles(session, rows, since=since, by=by)
    return rows


def _add_percentiles(
    session: Session, rows: list[dict[str, Any]], *, since: datetime, by: str
) -> None:
    log = RequestLogRecord
    group, ident = (log.model, "group") if by == "model" else (log.api_key_id, "api_key_id")
    values: dict[Any, tuple[list[float], list[float]]] = {}
    query = select(group, log.ttft_ms, log.duration_ms).where(
        log.created_at >= since, log.status == "ok"
    )
    for key, ttft, duration in session.execute(query):
        ttfts, durations = values.setdefault(key, ([], []))
        if ttft is not None:
            ttfts.append(ttft)
        durations.append(duration)
    for row in rows:
        ttfts, durations = values.get(row[ident], ([], []))
        for name, series in (("ttft", ttfts), ("duration", durations)):
            series.sort()
            row[f"{name}_p50"] = percentile_cont(series, 0.5)
            row[f"{name}_p95"] = percentile_cont(series, 0.95)


def percentile_cont(ordered: list[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont`` over already sorted values: linear interpolation."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def count_request_logs_before(session: Session, cutoff: datetime) -> int:
    query = select(func.count()).select_from(RequestLogRecord)
    return session.scalar(query.where(RequestLogRecord.created_at < cutoff)) or 0


def delete_request_logs_before(session: Session, cutoff: datetime) -> int:
    """Delete the rows created before ``cutoff``; return how many went."""
    statement = delete(RequestLogRecord).where(RequestLogRecord.created_at < cutoff)
    result = session.execute(statement.execution_options(synchronize_session=False))
    assert isinstance(result, CursorResult)  # a DML statement's result has a row count
    return int(result.rowcount)


# -- Key policy: what each key has used of its limits now (``keys list``, ``stats --by key``) ----


def key_usage_in_span(
    session: Session, key_ids: Collection[int], span: str, starts_at: datetime
) -> dict[int, tuple[int, int]]:
    """``(requests, tokens)`` of each key in the calendar ``span`` (``minute``, ``day``, ``week``,
    ``month``) that starts at ``starts_at``; keys without a row are absent. Primary-key lookups
    (``key_id, span, starts_at``), never a scan of the table."""
    if not key_ids:
        return {}
    usage = KeyUsageRecord
    query = select(usage.key_id, usage.requests, usage.tokens).where(
        usage.key_id.in_(sorted(key_ids)), usage.span == span, usage.starts_at == starts_at
    )
    return {key_id: (requests, tokens) for key_id, requests, tokens in session.execute(query)}


def running_leases(session: Session, key_ids: Collection[int], now: datetime) -> dict[int, int]:
    """How many unexpired concurrency leases each key holds (keys without any are absent);
    served by the index on ``key_leases.key_id``."""
    if not key_ids:
        return {}
    lease = KeyLeaseRecord
    query = (
        select(lease.key_id, func.count())
        .where(lease.key_id.in_(sorted(key_ids)), lease.expires_at >= now)
        .group_by(lease.key_id)
    )
    return {key_id: int(count) for key_id, count in session.execute(query)}
