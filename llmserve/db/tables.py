"""ORM tables (``*Record``). Changing one needs a migration; ``alembic check`` guards drift."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from llmserve.db.base import Base

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class SettingRecord(Base):
    """Server-wide settings shared by every replica and the CLI (e.g. ``active_model``)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RequestLogRecord(Base):
    """One row per generation."""

    __tablename__ = "request_log"
    __table_args__ = (
        Index("ix_request_log_created_at", "created_at"),
        Index("ix_request_log_model_created_at", "model", "created_at"),
        Index("ix_request_log_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    route: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(400))
    api_key_id: Mapped[int | None] = mapped_column(BigIntId)
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[str | None] = mapped_column(String(400))
    response_format: Mapped[str | None] = mapped_column(String(16))


class AuditRecord(Base):
    """One row per admin action (pull, delete, switch, key create/revoke): who, what, when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(400))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class ApiKeyRecord(Base):
    """An API key. Only a salted SHA-256 of the key is kept, never the key."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The key's policy (``services/policy.py``); None: no limit.
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    budget_tokens: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str | None] = mapped_column(String(8))
    #: Comma-separated model names or globs (``llama3*``); None or empty: every model.
    allowed_models: Mapped[str | None] = mapped_column(Text)
    #: Bumped by every change of the policy, so that servers see it (their key fingerprint).
    policy_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class KeyUsageRecord(Base):
    """What a key used in one calendar span: a minute (``minute``, for rpm and tpm) or its
    budget period (``day``, ``week``, ``month``). One upsert per request; never scanned."""

    __tablename__ = "key_usage"

    key_id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    span: Mapped[str] = mapped_column(String(8), primary_key=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)


class KeyLeaseRecord(Base):
    """One generation running under a key with a concurrency limit. It expires unless its
    server renews it, so a crashed server's generations stop counting by themselves."""

    __tablename__ = "key_leases"
    __table_args__ = (Index("ix_key_leases_key_id", "key_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[int] = mapped_column(BigIntId)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
