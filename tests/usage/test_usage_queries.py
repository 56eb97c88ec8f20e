"""The usage service and its queries, on real PostgreSQL and on a migrated SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmserve import errors
from llmserve.db import migrate, repositories
from llmserve.db.session import make_engine, make_sessions
from llmserve.services.usage import UsageService, UsageStats, prune_request_log, retention_period
from llmserve.settings import Settings, load_settings
from tests.usage._data import ERROR, seed

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        url = request.getfixturevalue("db_url")
    else:
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        migrate.upgrade(url)
    engine = make_engine(url)
    yield make_sessions(engine)
    engine.dispose()


@pytest.fixture
def usage(sessions: sessionmaker[Session]) -> UsageService:
    seed(sessions, NOW)
    return UsageService(sessions, now=lambda: NOW)


def by_group(found: list[UsageStats]) -> dict[str | None, UsageStats]:
    return {s.group: s for s in found}


def test_latest_rows_come_newest_first_with_key_names(usage: UsageService) -> None:
    entries = usage.latest()
    assert [round((NOW - e.created_at).total_seconds() / 60) for e in entries] == [
        1, 2, 3, 4, 5, 6, 7, 8, 2 * 24 * 60, 40 * 24 * 60
    ]  # fmt: skip
    assert [e.key for e in entries[:8]] == [
        "alice", "alice", "bob", "bob", None, "alice", None, None
    ]  # fmt: skip
    first = entries[0]
    assert (first.model, first.status, first.request_id, first.route) == (
        "m1",
        "ok",
        "r1",
        "generate",
    )
    assert (first.prompt_tokens, first.completion_tokens, first.ttft_ms, first.duration_ms) == (
        10, 20, 100.0, 1000.0
    )  # fmt: skip
    assert first.created_at == NOW - timedelta(minutes=1)
    assert first.created_at.tzinfo is not None
    stored = [e for e in entries if e.prompt is not None]
    assert [(e.prompt, e.response) for e in stored] == [("secret prompt", "answer")]
    assert [e.error for e in entries if e.status == "error"] == [ERROR]
    assert len(usage.latest(limit=3)) == 3


def test_latest_rows_filter_by_status_window_and_model(usage: UsageService) -> None:
    assert [(e.status, e.key) for e in usage.latest(status="error")] == [("error", "bob")]
    window = usage.latest(since=timedelta(minutes=5))  # created_at >= now - 5 min: inclusive
    assert [e.status for e in window] == ["ok", "ok", "ok", "error", "timeout"]
    assert [e.status for e in usage.latest(model="m2")] == ["cancelled", "rejected", "ok", "ok"]
    both = usage.latest(model="m2", status="ok", since=timedelta(days=1))
    assert [e.prompt for e in both] == ["secret prompt"]
    assert usage.latest(model="nope") == []


def test_rows_created_at_the_same_instant_come_newest_id_first(
    sessions: sessionmaker[Session],
) -> None:
    row = {"created_at": NOW, "route": "cli", "model": "m", "status": "ok", "duration_ms": 1.0}
    with sessions.begin() as session:
        repositories.insert_request_logs(
            session, [{**row, "request_id": f"r{i}"} for i in range(3)]
        )
    entries = UsageService(sessions, now=lambda: NOW).latest()
    assert [e.request_id for e in entries] == ["r2", "r1", "r0"]


def test_stats_per_model_over_the_last_day(usage: UsageService) -> None:
    found = usage.stats(since=timedelta(hours=24))
    assert [s.group for s in found] == ["m1", "m2"]  # busiest first
    m1, m2 = found
    assert (m1.requests, m1.errors, m1.cancelled, m1.rejected) == (5, 2, 0, 0)
    assert (m1.prompt_tokens, m1.completion_tokens) == (37, 55)
    assert m1.error_rate == pytest.approx(0.4)
    # percentile_cont over the ok rows only: TTFT 100, 200, 300; duration 1000, 2000, 4000.
    assert (m1.ttft_p50, m1.ttft_p95) == pytest.approx((200.0, 290.0))
    assert (m1.duration_p50, m1.duration_p95) == pytest.approx((2000.0, 3800.0))
    assert (m2.requests, m2.errors, m2.cancelled, m2.rejected) == (3, 0, 1, 1)
    assert (m2.prompt_tokens, m2.completion_tokens) == (7, 6)
    assert (m2.ttft_p50, m2.ttft_p95, m2.duration_p50, m2.duration_p95) == (80, 80, 800, 800)
    assert m2.error_rate == 0.0


def test_stats_per_key(usage: UsageService) -> None:
    found = by_group(usage.stats(since=timedelta(hours=24), by="key"))
    assert set(found) == {"alice", "bob", None}
    alice, bob, nobody = found["alice"], found["bob"], found[None]
    assert (alice.requests, alice.errors, alice.cancelled, alice.rejected) == (3, 0, 1, 0)
    assert (alice.prompt_tokens, alice.completion_tokens) == (23, 52)
    assert (alice.ttft_p50, alice.ttft_p95) == pytest.approx((150.0, 195.0))
    assert (alice.duration_p50, alice.duration_p95) == pytest.approx((1500.0, 1950.0))
    assert alice.api_key_id is not None
    assert (bob.requests, bob.errors, bob.error_rate, bob.ttft_p50) == (2, 1, 0.5, 300.0)
    assert (nobody.requests, nobody.errors, nobody.rejected, nobody.api_key_id) == (3, 1, 1, None)
    assert (nobody.prompt_tokens, nobody.completion_tokens, nobody.duration_p95) == (11, 4, 800)


def test_stats_windows(usage: UsageService) -> None:
    month = by_group(usage.stats(since=timedelta(days=30)))
    assert (month["m1"].requests, month["m2"].requests) == (6, 3)
    assert month["m1"].ttft_p50 == pytest.approx(250.0)  # 100, 200, 300, 9999
    assert sum(s.requests for s in usage.stats(since=timedelta(days=60))) == 10
    assert usage.stats(since=timedelta(seconds=30)) == []


def test_a_group_without_ok_rows_has_no_percentiles(sessions: sessionmaker[Session]) -> None:
    row = {"route": "cli", "model": "broken", "status": "error", "duration_ms": 5.0}
    with sessions.begin() as session:
        repositories.insert_request_logs(session, [{**row, "created_at": NOW}])
    [only] = UsageService(sessions, now=lambda: NOW).stats(since=timedelta(hours=1))
    assert (only.requests, only.errors, only.error_rate) == (1, 1, 1.0)
    assert (only.prompt_tokens, only.completion_tokens) == (0, 0)
    assert (only.ttft_p50, only.ttft_p95, only.duration_p50, only.duration_p95) == (None,) * 4


def test_prune_deletes_only_older_rows(
    usage: UsageService, sessions: sessionmaker[Session]
) -> None:
    assert usage.count_older_than(timedelta(days=1)) == 2
    assert usage.prune(timedelta(days=30)) == 1
    assert usage.prune(timedelta(days=30)) == 0
    assert usage.prune(timedelta(days=1)) == 1
    assert len(usage.latest()) == 8
    # The server's hourly entry point, with the real clock: every seeded row is in the past.
    assert prune_request_log(sessions, timedelta(minutes=1)) == 8
    assert usage.latest() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda u: u.latest(limit=0),
        lambda u: u.latest(limit=10_001),
        lambda u: u.latest(status="fine"),
        lambda u: u.stats(since=timedelta(hours=1), by="day"),
        lambda u: u.prune(timedelta(0)),
        lambda u: u.count_older_than(timedelta(days=-1)),
    ],
    ids=["limit-0", "limit-huge", "status", "grouping", "prune-0", "count-negative"],
)
def test_bad_arguments_are_invalid_requests(
    usage: UsageService, call: Callable[[UsageService], object]
) -> None:
    with pytest.raises(errors.InvalidRequestError):
        call(usage)


def test_retention_period() -> None:
    def settings(**values: object) -> Settings:
        return load_settings(env_file=None, **values)

    assert retention_period(settings(REQUEST_LOG_RETENTION_DAYS=7)) == timedelta(days=7)
    assert retention_period(settings(REQUEST_LOG_RETENTION_DAYS=0)) is None
    assert retention_period(settings()) == timedelta(days=30)


def test_percentile_cont_matches_postgresql_interpolation() -> None:
    assert repositories.percentile_cont([], 0.5) is None
    assert repositories.percentile_cont([7.0], 0.95) == 7.0
    assert repositories.percentile_cont([1.0, 2.0], 0.5) == 1.5
    assert repositories.percentile_cont([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert repositories.percentile_cont([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
