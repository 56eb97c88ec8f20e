"""Reading the request log: the latest rows, usage statistics, and retention; and what each
API key has used of its limits now.

``llmserve logs`` and ``llmserve stats`` call :class:`UsageService`; the server prunes once an
hour with :func:`prune_request_log` and :func:`retention_period`. Windows are relative to now
(UTC). Latency percentiles are taken over ``ok`` rows only: a rejected request's 0 ms or a
cancelled stream's cut-short duration says nothing about how fast generations are; failures
show in the error, cancelled and rejected counts instead.

A key's usage against its limits (``keys list``, ``stats --by key``) is read from the counters
the key policy keeps (``services/policy.py``), not from the request log: the current calendar
minute's requests and tokens, the live concurrency leases and the tokens of the budget's current
day, week or month (UTC). Only the counters a key's limits need exist, so a figure without its
limit is None.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, cast

from sqlalchemy.orm import Session, sessionmaker

from llmserve import errors
from llmserve.db import repositories
from llmserve.db.tables import ApiKeyRecord, RequestLogRecord
from llmserve.services.keys import policy_of
from llmserve.services.policy import PERIODS, KeyPolicy, span_end, span_start

if TYPE_CHECKING:
    from llmserve.settings import Settings

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "cancelled", "timeout", "rejected")
GROUPINGS = ("model", "key")
MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request-log row, with the name of the API key it used (None without a key)."""

    id: int
    created_at: datetime
    request_id: str | None
    route: str
    model: str
    key: str | None
    api_key_id: int | None
    status: str
    prompt_tokens: int | None
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float
    error: str | None
    prompt: str | None
    response: str | None


@dataclass(frozen=True, slots=True)
class UsageStats:
    """Usage of one model or one key over a window. Latencies in ms, over ``ok`` rows."""

    group: str | None  # the model, or the key's name (None: requests without a key)
    requests: int
    errors: int  # status error or timeout
    cancelled: int
    rejected: int
    prompt_tokens: int
    completion_tokens: int
    ttft_p50: float | None
    ttft_p95: float | None
    duration_p50: float | None
    duration_p95: float | None
    api_key_id: int | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """One key's limits and what it has used of each now; a usage figure is None when the key
    has no such limit (nothing counts it)."""

    key_id: int
    name: str
    policy: KeyPolicy  # KeyPolicy(): no limits, every model
    requests_this_minute: int | None  # against policy.rpm
    tokens_this_minute: int | None  # against policy.tpm
    running: int | None  # against policy.concurrency
    tokens_this_period: int | None  # against policy.budget, per policy.budget_period
    minute_resets_at: datetime
    period_resets_at: datetime | None

    @property
    def limited(self) -> bool:
        return self.policy != KeyPolicy()


@dataclass(frozen=True, slots=True)
class KeyStats:
    """A key's request-log figures over a window, and its limits now (None: requests without a
    key)."""

    usage: UsageStats
    limits: KeyLimits | None


class UsageService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._now = now

    def latest(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        since: timedelta | None = None,
        model: str | None = None,
    ) -> list[LogEntry]:
        """The newest ``limit`` rows first, optionally only one status, window or model."""
        if not 1 <= limit <= MAX_LIMIT:
            raise errors.InvalidRequestError(f"the limit must be between 1 and {MAX_LIMIT}")
        if status is not None and status not in STATUSES:
            raise errors.InvalidRequestError(
                f"unknown status {status!r}: use one of {', '.join(STATUSES)}"
            )
        start = self._now() - since if since is not None else None
        with self._sessions() as session:
            rows = repositories.recent_request_logs(
                session, limit=limit, status=status, since=start, model=model
            )
            return [_entry(record, key) for record, key in rows]

    def stats(self, *, since: timedelta, by: str = "model") -> list[UsageStats]:
        """Usage per model or per key over the last ``since``, busiest first."""
        if by not in GROUPINGS:
            raise errors.InvalidRequestError(f"unknown grouping {by!r}: use model or key")
        grouping = cast(Literal["model", "key"], by)
        with self._sessions() as session:
            rows = repositories.request_log_stats(session, since=self._now() - since, by=grouping)
        found = [UsageStats(**row) for row in rows]
        return sorted(found, key=lambda s: (-s.requests, s.group or ""))

    def stats_by_key(self, *, since: timedelta) -> list[KeyStats]:
        """:meth:`stats` per key, each with its limits and their usage now; keys with limits
        (and not revoked) but no request in the window follow, with zero requests."""
        groups = self.stats(since=since, by="key")
        with self._sessions() as session:
            records = repositories.all_api_keys(session)
        limits = {found.key_id: found for found in self.key_limits(records)}
        listed = {group.api_key_id for group in groups}
        idle = [
            _no_requests(limits[record.id])
            for record in sorted(records, key=lambda r: r.name)
            if record.id not in listed and record.revoked_at is None and limits[record.id].limited
        ]
        found = [
            KeyStats(group, limits.get(group.api_key_id) if group.api_key_id is not None else None)
            for group in groups
        ]
        return found + idle

    def key_limits(self, records: Iterable[ApiKeyRecord] | None = None) -> list[KeyLimits]:
        """Each key's limits (every key, or ``records``) and what it has used of them now, in
        a few primary-key lookups: one for the minute, one per budget period in use, one for
        the leases."""
        now = self._now()
        minute = span_start("minute", now)
        with self._sessions() as session:
            keys = list(records) if records is not None else repositories.all_api_keys(session)
            policies = {key.id: policy_of(key) or KeyPolicy() for key in keys}
            per_minute = repositories.key_usage_in_span(
                session,
                [i for i, p in policies.items() if p.rpm is not None or p.tpm is not None],
                "minute",
                minute,
            )
            per_period: dict[int, int] = {}
            for period in PERIODS:
                ids = [i for i, p in policies.items() if _budget_period(p) == period]
                found = repositories.key_usage_in_span(
                    session, ids, period, span_start(period, now)
                )
                per_period.update({key_id: tokens for key_id, (_, tokens) in found.items()})
            running = repositories.running_leases(
                session, [i for i, p in policies.items() if p.concurrency is not None], now
            )
        return [
            _limits(key, policies[key.id], now, per_minute, per_period, running) for key in keys
        ]

    def count_older_than(self, older_than: timedelta) -> int:
        with self._sessions() as session:
            return repositories.count_request_logs_before(session, self._cutoff(older_than))

    def prune(self, older_than: timedelta) -> int:
        """Delete the rows older than ``older_than``; return how many were deleted."""
        cutoff = self._cutoff(older_than)
        with self._sessions.begin() as session:
            deleted = repositories.delete_request_logs_before(session, cutoff)
        log.info("request log: deleted %d rows created before %s", deleted, cutoff.isoformat())
        return deleted

    def _cutoff(self, older_than: timedelta) -> datetime:
        if older_than <= timedelta(0):
            raise errors.InvalidRequestError("the age to prune must be positive")
        return self._now() - older_than


def retention_period(settings: Settings) -> timedelta | None:
    """How long request-log rows are kept (``REQUEST_LOG_RETENTION_DAYS``); None: forever."""
    days = settings.REQUEST_LOG_RETENTION_DAYS
    return timedelta(days=days) if days > 0 else None


def prune_request_log(sessions: sessionmaker[Session], older_than: timedelta) -> int:
    """Delete request-log rows older than ``older_than`` (for the server's hourly prune)."""
    return UsageService(sessions).prune(older_than)


def _budget_period(policy: KeyPolicy) -> str | None:
    return policy.budget_period if policy.budget is not None else None


def _limits(
    key: ApiKeyRecord,
    policy: KeyPolicy,
    now: datetime,
    per_minute: dict[int, tuple[int, int]],
    per_period: dict[int, int],
    running: dict[int, int],
) -> KeyLimits:
    requests, tokens = per_minute.get(key.id, (0, 0))
    period = _budget_period(policy)
    return KeyLimits(
        key_id=key.id,
        name=key.name,
        policy=policy,
        requests_this_minute=requests if policy.rpm is not None else None,
        tokens_this_minute=tokens if policy.tpm is not None else None,
        running=running.get(key.id, 0) if policy.concurrency is not None else None,
        tokens_this_period=per_period.get(key.id, 0) if period is not None else None,
        minute_resets_at=span_end("minute", span_start("minute", now)),
        period_resets_at=span_end(period, span_start(period, now)) if period else None,
    )


def _no_requests(limits: KeyLimits) -> KeyStats:
    usage = UsageStats(
        group=limits.name,
        requests=0,
        errors=0,
        cancelled=0,
        rejected=0,
        prompt_tokens=0,
        completion_tokens=0,
        ttft_p50=None,
        ttft_p95=None,
        duration_p50=None,
        duration_p95=None,
        api_key_id=limits.key_id,
    )
    return KeyStats(usage, limits)


def _entry(record: RequestLogRecord, key: str | None) -> LogEntry:
    return LogEntry(
        id=record.id,
        created_at=_aware(record.created_at),
        request_id=record.request_id,
        route=record.route,
        model=record.model,
        key=key,
        api_key_id=record.api_key_id,
        status=record.status,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        ttft_ms=record.ttft_ms,
        duration_ms=record.duration_ms,
        error=record.error,
        prompt=record.prompt,
        response=record.response,
    )


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
