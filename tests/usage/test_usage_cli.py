"""``llmserve logs``, ``logs prune`` and ``stats`` as users run them: real processes, database."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from llmserve.db.session import make_engine, make_sessions
from llmserve.services.usage import UsageService
from tests._cli_fork import run as forked
from tests.usage._data import seed

LLMSERVE = [sys.executable, "-m", "llmserve"]


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A real ``llmserve`` process, stdin not a terminal (forked from a warm interpreter: see
    ``tests/_cli_fork.py``; one test starts it cold, as a user does)."""
    return forked(args, env, cwd)


def cold(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLMSERVE, *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_one_red_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:")


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    sessions = make_sessions(engine)
    seed(sessions, datetime.now(UTC))
    yield sessions
    engine.dispose()


def test_logs_lists_the_latest_rows(
    sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    table = cold(["logs"], subprocess_env, tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "time (UTC)" in table.stdout and "prompt" in lines[1] and "response" in lines[1]
    body = [line for line in lines if "m1" in line or "m2" in line]
    assert len(body) == 10, table.stdout  # one line per row, even for the two-line error
    assert "alice" in body[0] and "bob" in body[2] and " - " in body[4]
    assert "backend exploded [bold]loudly[/bold] second line" in body[3]  # shown, not markup
    assert "secret prompt" in body[7] and "answer" in body[7]

    rows = json_lines(cli(["logs", "--json"], subprocess_env, tmp_path))
    assert [r["status"] for r in rows[:8]] == [
        "ok", "ok", "ok", "error", "timeout", "cancelled", "rejected", "ok"
    ]  # fmt: skip
    assert [r["key"] for r in rows[:4]] == ["alice", "alice", "bob", "bob"]
    assert rows[0]["request_id"] == "r1" and rows[0]["ttft_ms"] == 100.0
    assert datetime.fromisoformat(rows[0]["created_at"]) > datetime.fromisoformat(
        rows[1]["created_at"]
    )
    assert [(r["prompt"], r["response"]) for r in rows if r["prompt"]] == [
        ("secret prompt", "answer")
    ]
    assert len(json_lines(cli(["logs", "--json", "--limit", "3"], subprocess_env, tmp_path))) == 3


def test_logs_filters(
    sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    errors = json_lines(cli(["logs", "--status", "error", "--json"], subprocess_env, tmp_path))
    assert [(r["status"], r["key"], r["model"]) for r in errors] == [("error", "bob", "m1")]
    recent = json_lines(cli(["logs", "--since", "1h", "--json"], subprocess_env, tmp_path))
    assert len(recent) == 8
    m2 = json_lines(
        cli(["logs", "--model", "m2", "--since", "1d", "--json"], subprocess_env, tmp_path)
    )
    assert [r["status"] for r in m2] == ["cancelled", "rejected", "ok"]
    table = cli(["logs", "--status", "error"], subprocess_env, tmp_path)
    assert "bob" in table.stdout and "alice" not in table.stdout


def test_stats(
    sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    table = cli(["stats"], subprocess_env, tmp_path)
    assert table.returncode == 0, table.stderr
    m1 = next(line for line in table.stdout.splitlines() if "m1" in line)
    assert [cell.strip() for cell in m1.split("│")[1:12]] == [
        "m1", "5", "2", "40.0%", "0", "0", "37", "55", "200", "290", "2,000"
    ]  # fmt: skip

    by_key = json_lines(cli(["stats", "--by", "key", "--json"], subprocess_env, tmp_path))
    found = {row["key"]: row for row in by_key}
    assert set(found) == {"alice", "bob", None}
    alice = found["alice"]
    assert isinstance(alice.pop("api_key_id"), int)
    assert alice == {
        "key": "alice",
        "window": "24h",
        "requests": 3,
        "errors": 0,
        "error_rate": 0.0,
        "cancelled": 1,
        "rejected": 0,
        "prompt_tokens": 23,
        "completion_tokens": 52,
        "ttft_p50_ms": 150.0,
        "ttft_p95_ms": 195.0,
        "duration_p50_ms": 1500.0,
        "duration_p95_ms": 1950.0,
        "limits": {"rpm": None, "tpm": None, "concurrency": None, "budget": None, "models": None},
    }
    assert (found["bob"]["errors"], found["bob"]["error_rate"]) == (1, 0.5)
    month = json_lines(cli(["stats", "--since", "30d", "--json"], subprocess_env, tmp_path))
    assert {row["model"]: row["requests"] for row in month} == {"m1": 6, "m2": 3}


def test_logs_prune(
    sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    usage = UsageService(sessions)
    pruned = cli(["logs", "prune", "--older-than", "1d", "--yes"], subprocess_env, tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == ""
    assert "Deleted 2 request-log rows older than 1d." in pruned.stderr
    assert len(usage.latest()) == 8
    again = cli(["logs", "prune", "--yes"], subprocess_env, tmp_path)  # default: 30 days
    assert "Deleted 0 request-log rows older than 30d." in again.stderr
    assert len(usage.latest()) == 8


def test_logs_prune_with_the_default_retention(
    sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    pruned = cli(["logs", "prune", "--yes"], subprocess_env, tmp_path)
    assert "Deleted 1 request-log row older than 30d." in pruned.stderr
    assert len(UsageService(sessions).latest()) == 9


def test_retention_setting(
    sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    one_day = {**subprocess_env, "REQUEST_LOG_RETENTION_DAYS": "1"}
    pruned = cli(["logs", "prune", "--yes"], one_day, tmp_path)
    assert "Deleted 2 request-log rows older than 1d." in pruned.stderr
    forever = {**subprocess_env, "REQUEST_LOG_RETENTION_DAYS": "0"}
    result = cli(["logs", "prune", "--yes"], forever, tmp_path)
    assert_one_red_line(result)
    assert "--older-than" in result.stderr
    assert cli(["logs", "prune", "--older-than", "1m", "--yes"], forever, tmp_path).returncode == 0
    assert UsageService(sessions).latest() == []
    bad = cli(["logs", "prune", "--yes"], {**forever, "REQUEST_LOG_RETENTION_DAYS": "-1"}, tmp_path)
    assert_one_red_line(bad)
    assert "REQUEST_LOG_RETENTION_DAYS" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "--since", "soon"],
        ["logs", "--status", "fine"],
        ["stats", "--by", "day"],
        ["logs", "prune", "--older-than", "soon", "--yes"],
        ["logs", "prune"],  # stdin is not a terminal: no prompt, so --yes is required
    ],
    ids=" ".join,
)
def test_bad_input_is_one_red_line(
    args: list[str], sessions: sessionmaker[Session], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    result = cli(args, subprocess_env, tmp_path)
    assert_one_red_line(result)
    assert result.returncode == 2
    assert len(UsageService(sessions).latest()) == 10  # nothing was pruned
