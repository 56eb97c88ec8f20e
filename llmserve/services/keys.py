"""API keys: create, list, revoke, and authenticate without a database trip.

A key is ``llms_`` + 43 URL-safe characters (32 random bytes). Only ``prefix`` (the first 13
characters, shown in listings and accepted by ``revoke``), a random salt and ``sha256(salt +
key)`` are stored. Serving processes keep every key's prefix, hash and state in memory and check
for changes every ``refresh_s`` seconds (one small query on a held connection), so a revocation
anywhere stops the key on every server within about ``refresh_s``; an unknown prefix is looked
up once in the database (at most 20 such look-ups a second, so a flood of made-up keys cannot
hammer it), so a freshly created key works at once. ``last_used_at`` is collected in memory and
written in batches by the reload, never per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from llmserve import errors
from llmserve.db import repositories
from llmserve.db.session import HeldConnection, compiled
from llmserve.db.tables import ApiKeyRecord
from llmserve.services.policy import PERIODS, KeyPolicy, Period

log = logging.getLogger(__name__)

KEY_PREFIX = "llms_"
PREFIX_LENGTH = len(KEY_PREFIX) + 8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}\Z")
_DURATION = re.compile(r"(\d+)([smhdw])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as, and the key's limits (None: none)."""

    key_id: int
    name: str
    admin: bool
    policy: KeyPolicy | None = None


@dataclass(frozen=True, slots=True)
class _CachedKey:
    principal: Principal
    salt: bytes
    key_hash: bytes
    expires_at: datetime | None
    revoked: bool


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` → timedelta (for ``--expires-in``)."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise errors.InvalidRequestError(
            f"invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 2w"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _hash(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


#: How often a server writes its keys' ``last_used_at`` (and at shutdown): it answers "when was this
#: key last used", where ten seconds make no difference.
USED_WRITE_S = 10.0


class KeyService:
    def __init__(self, sessions: sessionmaker[Session], refresh_s: float = 0.5) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        engine = sessions.kw["bind"]
        self._poll = HeldConnection(engine)
        self._fingerprint_sql = compiled(engine, repositories.api_keys_fingerprint_query())
        self._fingerprint: tuple[int, ...] | None = None
        self._by_prefix: dict[str, _CachedKey] = {}
        self._used: dict[int, datetime] = {}
        self._used_written = time.monotonic()
        self._lookups: collections.deque[float] = collections.deque()
        self._reload_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- management (CLI) -------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        admin: bool = False,
        expires_in: timedelta | None = None,
        policy: KeyPolicy | None = None,
        actor: str,
    ) -> tuple[str, ApiKeyRecord]:
        """Create a key; return the plain key (shown once) and its record."""
        if not _NAME.match(name):
            raise errors.InvalidRequestError(
                f"invalid key name {name!r}: 1-100 letters, digits, '_', '.', '@' or '-'"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        record = ApiKeyRecord(
            name=name,
            prefix=key[:PREFIX_LENGTH],
            salt=salt.hex(),
            key_hash=_hash(salt, key).hex(),
            is_admin=admin,
            created_at=datetime.now(UTC),
            expires_at=datetime.now(UTC) + expires_in if expires_in else None,
            policy_version=0,
        )
        _store_policy(record, policy or KeyPolicy())
        try:
            with self._sessions.begin() as session:
                if repositories.api_key_named(session, name) is not None:
                    raise errors.InvalidRequestError(f"a key named {name!r} exists already")
                repositories.add_api_key(session, record)
                repositories.insert_audit(
                    session,
                    actor=actor,
                    action="key_create",
                    target=name,
                    outcome="ok",
                    detail=f"prefix {record.prefix}, {_describe(record)}",
                )
        except IntegrityError:
            raise errors.InvalidRequestError(f"a key named {name!r} exists already") from None
        return key, record

    def update(self, name_or_prefix: str, *, changes: dict[str, Any], actor: str) -> ApiKeyRecord:
        """Change a key's limits or scope: ``changes`` maps ``KeyPolicy`` fields (and
        ``admin``) to new values; None removes a limit. Servers follow within a refresh."""
        with self._sessions.begin() as session:
            record = repositories.api_key_by_name_or_prefix(session, name_or_prefix)
            if record is None:
                raise errors.InvalidRequestError(f"no key named or prefixed {name_or_prefix!r}")
            if "admin" in changes:
                record.is_admin = bool(changes.pop("admin"))
            current = policy_of(record) or KeyPolicy()
            _store_policy(record, replace(current, **changes))
            record.policy_version = (record.policy_version or 0) + 1
            repositories.insert_audit(
                session,
                actor=actor,
                action="key_update",
                target=record.name,
                outcome="ok",
                detail=_describe(record),
            )
            return record

    def list(self) -> list[ApiKeyRecord]:
        with self._sessions() as session:
            return repositories.all_api_keys(session)

    def revoke(self, name_or_prefix: str, *, actor: str) -> ApiKeyRecord:
        with self._sessions.begin() as session:
            record = repositories.api_key_by_name_or_prefix(session, name_or_prefix)
            if record is None:
                raise errors.InvalidRequestError(f"no key named or prefixed {name_or_prefix!r}")
            if record.revoked_at is None:
                record.revoked_at = datetime.now(UTC)
            repositories.insert_audit(
                session, actor=actor, action="key_revoke", target=record.name, outcome="ok"
            )
            return record

    # -- authentication (server) ------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._follow(), name="api-key-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.reload(write_used=True)  # the last batch of last_used_at
        self._poll.close()

    async def authenticate(self, key: str | None) -> Principal:
        """The key's principal, or ``errors.AuthenticationError``. No database trip when cached."""
        if not key:
            raise errors.AuthenticationError("an API key is required (Authorization: Bearer <key>)")
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            raise errors.AuthenticationError("invalid API key")
        prefix = key[:PREFIX_LENGTH]
        cached = self._by_prefix.get(prefix)
        if cached is None and self._may_look_up():
            cached = await self._lookup(prefix)  # perhaps created a moment ago
        if cached is None or not hmac.compare_digest(_hash(cached.salt, key), cached.key_hash):
            raise errors.AuthenticationError("invalid API key")
        if cached.revoked:
            raise errors.AuthenticationError("this API key has been revoked")
        now = datetime.now(UTC)
        if cached.expires_at is not None and cached.expires_at <= now:
            raise errors.AuthenticationError("this API key has expired")
        self._used[cached.principal.key_id] = now
        return cached.principal

    async def reload(self, *, write_used: bool = False) -> None:
        """Follow key changes; every ``USED_WRITE_S`` (or with ``write_used``) also write the
        batched ``last_used_at`` (a transaction, so not on every poll)."""
        async with self._reload_lock:
            used: dict[int, datetime] = {}
            if write_used or time.monotonic() - self._used_written >= USED_WRITE_S:
                used, self._used = self._used, {}
                self._used_written = time.monotonic()
            try:
                loaded = await asyncio.to_thread(self._load, used)
            except SQLAlchemyError as exc:
                self._used = {**used, **self._used}
                log.warning("api keys: database unavailable, keeping the cached keys (%s)", exc)
                return
            if loaded is not None:
                self._by_prefix = loaded

    def _may_look_up(self, per_second: int = 20) -> bool:
        now = time.monotonic()
        while self._lookups and now - self._lookups[0] > 1.0:
            self._lookups.popleft()
        if len(self._lookups) >= per_second:
            return False
        self._lookups.append(now)
        return True

    async def _lookup(self, prefix: str) -> _CachedKey | None:
        def read() -> _CachedKey | None:
            with self._sessions() as session:
                record = repositories.api_key_by_prefix(session, prefix)
                return _cached(record) if record is not None else None

        try:
            found = await asyncio.to_thread(read)
        except SQLAlchemyError:
            return None
        if found is not None:
            self._by_prefix[prefix] = found
        return found

    def _load(self, used: dict[int, datetime]) -> dict[str, _CachedKey] | None:
        """Write the batched ``last_used_at``; the keys if any changed (else None).

        Each poll is one cheap query on a held connection (a fingerprint of the table); the
        keys themselves are read only when it changes.
        """
        if used:
            with self._sessions.begin() as session:
                repositories.touch_api_keys(session, used)

        row = self._poll.first_row(self._fingerprint_sql)
        fingerprint = tuple(int(value) for value in row) if row is not None else None
        if fingerprint == self._fingerprint:
            return None
        keys = self._poll.run(repositories.api_key_rows)
        self._fingerprint = fingerprint
        return {key.prefix: _cached(key) for key in keys}

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.reload()


def _cached(record: ApiKeyRecord | Any) -> _CachedKey:
    """From an ORM record or a plain row of the same table."""
    return _CachedKey(
        principal=Principal(record.id, record.name, record.is_admin, policy_of(record)),
        salt=bytes.fromhex(record.salt),
        key_hash=bytes.fromhex(record.key_hash),
        expires_at=_aware(record.expires_at),
        revoked=record.revoked_at is not None,
    )


def _period(stored: str | None) -> Period | None:
    """A stored budget period (written from a KeyPolicy: one of PERIODS), as its type."""
    return next((period for period in PERIODS if period == stored), None)


def policy_of(record: ApiKeyRecord | Any) -> KeyPolicy | None:
    """The key's policy from its record or row; None when it has neither limits nor models."""
    models = tuple(m for m in (record.allowed_models or "").split(",") if m)
    policy = KeyPolicy(
        rpm=record.rpm,
        tpm=record.tpm,
        concurrency=record.concurrency,
        budget=record.budget_tokens,
        budget_period=_period(record.budget_period) if record.budget_tokens is not None else None,
        models=models,
    )
    return policy if policy.counted or policy.models else None


def _describe(record: ApiKeyRecord) -> str:
    """``admin, rpm 10, models llama3*`` (for audit rows)."""
    scope = "admin" if record.is_admin else "plain"
    return f"{scope}, {(policy_of(record) or KeyPolicy()).describe()}"


#: The largest value each limit's column holds (32-bit, or 64-bit for the budget).
_LIMIT_MAX = {"rpm": 2**31 - 1, "tpm": 2**31 - 1, "concurrency": 2**31 - 1, "budget": 2**63 - 1}


def _store_policy(record: ApiKeyRecord, policy: KeyPolicy) -> None:
    for name, most in _LIMIT_MAX.items():
        value = getattr(policy, name)
        if value is not None and value < 1:
            raise errors.InvalidRequestError(f"--{name} must be at least 1")
        if value is not None and value > most:
            raise errors.InvalidRequestError(f"--{name}: at most {most}")
    record.rpm, record.tpm, record.concurrency = policy.rpm, policy.tpm, policy.concurrency
    record.budget_tokens = policy.budget
    record.budget_period = policy.budget_period if policy.budget is not None else None
    record.allowed_models = ",".join(policy.models) or None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
