"""``llmserve keys create|update|list`` with limits, and ``stats --by key``, as users run them:
real subprocesses on the real PostgreSQL (and once on SQLite). Usage is made through the key
policy's own counters (``PolicyService``), by a running server, or as rows the policy writes.

The commands are forked from a warm interpreter (``tests/_cli_fork.py``: real processes, without
seconds of imports each); the first ``keys create`` starts cold, as an operator's does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, event, text

from llmserve.db import repositories
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import KeyLeaseRecord, KeyUsageRecord, RequestLogRecord
from llmserve.services.keys import KeyService, Principal, policy_of
from llmserve.services.policy import KeyPolicy, PolicyService, span_start
from llmserve.services.usage import UsageService
from tests._cli_fork import run
from tests._server import running_server
from tests.e2e._cli import assert_one_red_line
from tests.e2e._cli import run as cold
from tests.fakes.ollama_double import OllamaDouble, Script

NO_LIMITS = {"rpm": None, "tpm": None, "concurrency": None, "budget": None, "models": None}
#: How long a running server may take to apply a ``keys update`` before a test fails.
UPDATE_DEADLINE_S = 15.0


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def listed(env: dict[str, str], cwd: Path) -> dict[str, dict]:
    """``keys list --json`` by key name."""
    rows = [
        json.loads(line)
        for line in ok(run(["keys", "list", "--json"], env, cwd)).stdout.split("\n")
        if line
    ]
    return {row["name"]: row for row in rows}


def limits(env: dict[str, str], cwd: Path, name: str) -> dict:
    return listed(env, cwd)[name]["limits"]


def table_row(output: str, name: str) -> list[str]:
    """The cells of ``name``'s row in a Rich table."""
    line = next(line for line in output.splitlines() if line.startswith(f"│ {name} "))
    return [cell.strip() for cell in line.split("│")[1:-1]]


def wait_for_minute_start(margin_s: float = 8.0) -> None:
    """Sleep past a minute boundary if fewer than ``margin_s`` seconds of it remain, so that a
    test's usage and its reading share one calendar minute."""
    now = datetime.now(UTC)
    left = 60 - now.second - now.microsecond / 1e6
    if left < margin_s:
        time.sleep(left + 0.1)


def key_id(db_url: str, name: str) -> int:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            record = repositories.api_key_named(session, name)
            assert record is not None
            return record.id
    finally:
        engine.dispose()


def use(db_url: str, principal: Principal, tokens: list[int]) -> None:
    """One request per entry of ``tokens`` through the policy's own admit and settle, each
    charged that many tokens when it ends."""

    async def requests() -> None:
        policy = PolicyService(make_engine(db_url))
        await policy.start()
        try:
            for used in tokens:
                ticket = await policy.admit(principal, "llama3.2")
                policy.settle(ticket, used)
                await policy.flush()  # the lease is given back before the next request
        finally:
            await policy.stop()

    asyncio.run(requests())


def add_rows(db_url: str, *rows: object) -> None:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine).begin() as session:
            session.add_all(rows)
    finally:
        engine.dispose()


# -- keys create --------------------------------------------------------------------------------


def test_create_with_every_option_and_list_them(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    created = ok(
        cold(
            [
                "keys", "create", "team", "--admin", "--expires-in", "30d",
                "--rpm", "10", "--tpm", "5000", "--concurrency", "2",
                "--budget", "1000/week", "--models", "llama3*, qwen2.5:0.5b",
            ],
            subprocess_env,
            tmp_path,
        )
    )  # fmt: skip
    assert created.stdout == created.stdout.strip() + "\n", "the key must be alone on stdout"
    described = " ".join(created.stderr.split())
    for words in ("rpm 10", "tpm 5000", "concurrency 2", "budget 1000/week"):
        assert words in described
    assert "models llama3*,qwen2.5:0.5b" in described
    ok(run(["keys", "create", "free"], subprocess_env, tmp_path))
    rows = listed(subprocess_env, tmp_path)
    team = rows["team"]
    assert "admin" in team["scopes"] and team["expires_at"]
    assert team["limits"]["budget"]["period"] == "week"
    monday = datetime.fromisoformat(team["limits"]["budget"]["resets_at"])
    assert monday.weekday() == 0 and (monday.hour, monday.minute) == (0, 0)
    assert rows["free"]["limits"] == NO_LIMITS

    table = ok(run(["keys", "list"], subprocess_env, tmp_path)).stdout
    header = table_row(table.replace("┃", "│"), "name")
    assert header[:8] == [
        "name", "prefix", "scopes", "rpm", "tpm", "concurrency", "budget", "models"
    ]  # fmt: skip
    assert table_row(table, "team")[2:8] == [
        "admin", "0/10", "0/5,000", "0/2", "0/1,000 per week", "llama3*,qwen2.5:0.5b"
    ]  # fmt: skip
    assert table_row(table, "free")[2:8] == ["plain", "-", "-", "-", "-", "-"]


# -- keys update --------------------------------------------------------------------------------


def test_update_sets_and_clears_limits_and_the_admin_scope(
    subprocess_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    env = subprocess_env
    key = ok(run(["keys", "create", "app", "--rpm", "10"], env, tmp_path)).stdout.strip()

    updated = ok(
        run(
            [
                "keys", "update", "app", "--tpm", "900", "--concurrency", "3",
                "--budget", "50000/day", "--models", "qwen*", "--admin",
            ],
            env,
            tmp_path,
        )
    )  # fmt: skip
    assert updated.stdout == ""
    assert "Updated key app" in updated.stderr
    assert "admin, rpm 10, tpm 900, concurrency 3, budget 50000/day, models qwen*" in " ".join(
        updated.stderr.split()
    )
    row = listed(env, tmp_path)["app"]
    assert "admin" in row["scopes"]
    found = row["limits"]
    assert (found["rpm"]["limit"], found["tpm"]["limit"]) == (10, 900)  # rpm was kept
    assert found["concurrency"] == {"limit": 3, "used": 0}
    assert (found["budget"]["limit"], found["budget"]["period"]) == (50000, "day")
    assert found["models"] == ["qwen*"]

    ok(run(["keys", "update", key[:13], "--clear", "rpm,budget", "--no-admin"], env, tmp_path))
    row = listed(env, tmp_path)["app"]
    assert "admin" not in row["scopes"]
    found = row["limits"]
    assert found["rpm"] is None and found["budget"] is None
    assert found["tpm"]["limit"] == 900 and found["models"] == ["qwen*"]

    ok(run(["keys", "update", "app", "--clear", "models", "--clear", "tpm"], env, tmp_path))
    assert limits(env, tmp_path, "app") == {**NO_LIMITS, "concurrency": {"limit": 3, "used": 0}}
    cleared = ok(run(["keys", "update", "app", "--clear", "all"], env, tmp_path))
    assert "plain, no limits" in cleared.stderr
    assert limits(env, tmp_path, "app") == NO_LIMITS

    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            audit = connection.execute(
                text("SELECT detail FROM audit_log WHERE action = 'key_update' ORDER BY id")
            ).scalars()
            assert list(audit)[-1] == "plain, no limits"
    finally:
        engine.dispose()


def test_update_help_documents_how_to_remove_a_limit(tmp_path: Path) -> None:
    result = ok(run(["keys", "update", "--help"], {"PATH": "/usr/bin:/bin"}, tmp_path))
    words = " ".join(result.stdout.replace("│", " ").split())
    for option in ("--rpm", "--tpm", "--concurrency", "--budget", "--models", "--no-admin"):
        assert option in words
    assert "--clear LIMITS Remove limits: any of rpm, tpm, concurrency, budget, models" in words
    assert "every model" in words


# -- keys list: current usage -------------------------------------------------------------------


def test_list_shows_what_each_key_used_of_its_limits_now(
    subprocess_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    env = subprocess_env
    ok(
        run(
            [
                "keys", "create", "busy", "--rpm", "10", "--tpm", "1000",
                "--concurrency", "4", "--budget", "500/day",
            ],
            env,
            tmp_path,
        )
    )  # fmt: skip
    ok(run(["keys", "create", "other", "--rpm", "5"], env, tmp_path))
    busy, other = key_id(db_url, "busy"), key_id(db_url, "other")
    policy = KeyPolicy(rpm=10, tpm=1000, concurrency=4, budget=500, budget_period="day")
    wait_for_minute_start()
    use(db_url, Principal(busy, "busy", False, policy), [30, 12, 0])
    now = datetime.now(UTC)
    minute, day = span_start("minute", now), span_start("day", now)
    add_rows(
        db_url,
        # what an earlier minute, an earlier day and another key used does not count
        KeyUsageRecord(
            key_id=busy, span="minute", starts_at=minute - timedelta(minutes=1), requests=9,
            tokens=900,
        ),
        KeyUsageRecord(
            key_id=busy, span="day", starts_at=day - timedelta(days=1), requests=0, tokens=400
        ),
        KeyUsageRecord(key_id=other, span="minute", starts_at=minute, requests=4, tokens=0),
        # two generations running; a crashed server's expired lease does not count
        KeyLeaseRecord(id="a" * 32, key_id=busy, expires_at=now + timedelta(seconds=30)),
        KeyLeaseRecord(id="b" * 32, key_id=busy, expires_at=now + timedelta(seconds=30)),
        KeyLeaseRecord(id="c" * 32, key_id=busy, expires_at=now - timedelta(seconds=1)),
    )  # fmt: skip

    found = limits(env, tmp_path, "busy")
    assert found["rpm"]["used"] == 3
    assert found["tpm"]["used"] == 42
    assert found["concurrency"] == {"limit": 4, "used": 2}
    assert found["budget"]["used"] == 42
    assert datetime.fromisoformat(found["rpm"]["resets_at"]) == minute + timedelta(minutes=1)
    assert datetime.fromisoformat(found["budget"]["resets_at"]) == day + timedelta(days=1)
    assert limits(env, tmp_path, "other")["rpm"]["used"] == 4

    table = ok(run(["keys", "list"], env, tmp_path)).stdout
    assert table_row(table, "busy")[3:7] == ["3/10", "42/1,000", "2/4", "42/500 per day"]
    assert table_row(table, "other")[3:7] == ["4/5", "-", "-", "-"]


def test_usage_is_read_with_index_lookups_only(
    subprocess_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """Each statement reading the keys' usage is served by the primary key of ``key_usage``
    or the index on ``key_leases.key_id``, even where the planner would rather scan a small
    table; keys without limits cost no statement."""
    for args in (["--rpm", "1", "--concurrency", "1", "--budget", "9/month"], ["--tpm", "5"], []):
        ok(run(["keys", "create", f"k{len(args)}", *args], subprocess_env, tmp_path))
    engine = make_engine(db_url)
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if "key_usage" in statement or "key_leases" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert len(UsageService(make_sessions(engine)).key_limits()) == 3
        event.remove(engine, "before_cursor_execute", capture)
        assert len(statements) == 3  # the minute (both keys at once), the month, the leases
        with engine.connect() as connection:
            connection.exec_driver_sql("SET enable_seqscan = off")
            for statement, parameters in statements:
                plan = "\n".join(
                    row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters)
                )
                assert "Seq Scan" not in plan, plan
                index = "pk_key_usage" if "key_usage" in statement else "ix_key_leases_key_id"
                assert index in plan, plan
                if "key_usage" in statement:
                    assert "span" in plan and "starts_at" in plan.split("Index Cond")[1], plan
    finally:
        engine.dispose()


# -- stats --by key -----------------------------------------------------------------------------


def test_stats_by_key_shows_usage_against_each_limit(
    subprocess_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    env = subprocess_env
    ok(
        run(
            [
                "keys", "create", "limited", "--rpm", "10", "--tpm", "1000",
                "--concurrency", "2", "--budget", "5000/month", "--models", "llama3*",
            ],
            env,
            tmp_path,
        )
    )  # fmt: skip
    ok(run(["keys", "create", "free"], env, tmp_path))
    ok(run(["keys", "create", "idle", "--rpm", "7"], env, tmp_path))
    ok(run(["keys", "create", "gone", "--rpm", "7"], env, tmp_path))
    ok(run(["keys", "revoke", "gone"], env, tmp_path))
    limited, free = key_id(db_url, "limited"), key_id(db_url, "free")
    policy = KeyPolicy(
        rpm=10, tpm=1000, concurrency=2, budget=5000, budget_period="month", models=("llama3*",)
    )
    wait_for_minute_start()
    use(db_url, Principal(limited, "limited", False, policy), [25, 15])
    now = datetime.now(UTC)
    log = {"route": "generate", "model": "llama3.2", "status": "ok", "duration_ms": 100.0}

    def logged(key: int | None, prompt: int, completion: int) -> RequestLogRecord:
        return RequestLogRecord(
            **log, api_key_id=key, prompt_tokens=prompt, completion_tokens=completion,
            created_at=now,
        )  # fmt: skip

    add_rows(
        db_url,
        logged(limited, 5, 20),
        logged(limited, 5, 10),
        logged(free, 1, 2),
        logged(None, 1, 2),
        KeyLeaseRecord(id="a" * 32, key_id=limited, expires_at=now + timedelta(seconds=30)),
    )

    rows = [
        json.loads(line)
        for line in ok(run(["stats", "--by", "key", "--json"], env, tmp_path)).stdout.splitlines()
    ]
    by_key = {row["key"]: row for row in rows}
    assert list(by_key) == ["limited", None, "free", "idle"]  # busiest first, then idle limits
    row = by_key["limited"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (2, 10, 30)
    found = row["limits"]
    assert (found["rpm"]["limit"], found["rpm"]["used"]) == (10, 2)
    assert (found["tpm"]["limit"], found["tpm"]["used"]) == (1000, 40)
    assert found["concurrency"] == {"limit": 2, "used": 1}
    assert (found["budget"]["period"], found["budget"]["used"]) == ("month", 40)
    assert found["models"] == ["llama3*"]
    assert by_key["free"]["limits"] == NO_LIMITS
    assert by_key[None]["limits"] is None  # requests without a key
    assert by_key["idle"]["requests"] == 0 and by_key["idle"]["limits"]["rpm"]["used"] == 0

    table = ok(run(["stats", "--by", "key"], env, tmp_path)).stdout
    header = table_row(table.replace("┃", "│"), "key")
    assert header[-5:] == ["rpm", "tpm", "concurrency", "budget", "models"]
    assert table_row(table, "limited")[1] == "2"
    assert table_row(table, "limited")[-5:] == [
        "2/10", "40/1,000", "1/2", "40/5,000 per month", "llama3*"
    ]  # fmt: skip
    assert table_row(table, "free")[-5:] == ["-"] * 5
    assert table_row(table, "-")[-5:] == ["-"] * 5
    assert table_row(table, "idle")[1] == "0"
    assert "gone" not in table
    by_model = ok(run(["stats"], env, tmp_path)).stdout
    assert "rpm" not in by_model and "llama3.2" in by_model


# -- a running server follows, and its usage shows ------------------------------------------


def test_an_update_reaches_a_running_server_and_its_usage_shows(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    env = {**subprocess_env, "AUTH_REQUIRED": "true"}
    key = ok(
        run(
            ["keys", "create", "app", "--rpm", "5", "--tpm", "10000", "--models", "qwen*"],
            env,
            tmp_path,
        )
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    wait_for_minute_start(margin_s=12)
    with running_server(env, tmp_path, warm=True) as server:
        url = server.base_url + "/api/v1/generate"
        assert httpx.post(url, json={"prompt": "hi"}, headers=headers).status_code == 403
        ok(run(["keys", "update", "app", "--clear", "models"], env, tmp_path))
        # The server applies an update within its refresh interval; the deadline is generous:
        # the test is about the update arriving, and a loaded machine may take longer.
        deadline = time.monotonic() + UPDATE_DEADLINE_S
        ollama.enqueue(Script(tokens=["a"] * 10, prompt_eval_count=5))
        while httpx.post(url, json={"prompt": "hi"}, headers=headers).status_code == 403:
            assert time.monotonic() < deadline, "the server still refuses the model"
            time.sleep(0.02)
        ollama.enqueue(Script(tokens=["a"] * 10, prompt_eval_count=5))
        assert httpx.post(url, json={"prompt": "hi"}, headers=headers).status_code == 200

        deadline = time.monotonic() + 10
        while True:  # tokens are charged in the background when a generation ends
            found = limits(env, tmp_path, "app")
            if found["tpm"]["used"] >= 30 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found["rpm"]["used"] == 2  # the refused 403s counted for nothing
        assert found["tpm"]["used"] == 30  # 2 x (5 prompt + 10 completion)
        assert found["models"] is None

        ok(run(["keys", "update", "app", "--rpm", "2"], env, tmp_path))
        # Until the server has the update, the old --rpm 5 admits three more and then refuses
        # too: only a refusal that names the new limit shows that the update arrived.
        deadline = time.monotonic() + UPDATE_DEADLINE_S
        while True:
            answer = httpx.post(url, json={"prompt": "hi"}, headers=headers)
            if answer.status_code == 429 and "over 2 requests per minute" in answer.text:
                break
            assert answer.status_code in (200, 429), answer.text
            assert time.monotonic() < deadline, "the server did not apply --rpm 2"
            time.sleep(0.02)


# -- bad input ----------------------------------------------------------------------------------


BAD_INPUT = [
    (["keys", "create", "x", "--budget", "5/year"], "--budget"),
    (["keys", "create", "x", "--rpm", "-1"], "--rpm"),
    (["keys", "create", "x", "--tpm", "lots"], "--tpm"),
    (["keys", "create", "x", "--concurrency", "99999999999"], "--concurrency"),
    (["keys", "create", "x", "--models", " "], "--models"),
    (["keys", "update", "nobody", "--rpm", "3"], "nobody"),
    (["keys", "update", "app", "--clear", "speed"], "speed"),
    (["keys", "update", "app", "--rpm", "3", "--clear", "rpm"], "--clear rpm"),
    (["keys", "update", "app"], "nothing to change"),
]


@pytest.mark.parametrize(("args", "says"), BAD_INPUT, ids=[" ".join(c[0]) for c in BAD_INPUT])
def test_bad_input_is_one_red_line_and_exit_2(
    args: list[str], says: str, subprocess_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    engine = make_engine(db_url)
    try:
        KeyService(make_sessions(engine)).create("app", policy=KeyPolicy(rpm=10), actor="test")
    finally:
        engine.dispose()
    result = run(args, subprocess_env, tmp_path)
    assert_one_red_line(result)
    assert result.returncode == 2
    assert result.stdout == ""
    assert says in result.stderr
    engine = make_engine(db_url)
    try:
        records = KeyService(make_sessions(engine)).list()
    finally:
        engine.dispose()
    assert [r.name for r in records] == ["app"], "nothing was created"
    assert policy_of(records[0]) == KeyPolicy(rpm=10), "nothing was changed"


# -- SQLite -------------------------------------------------------------------------------------


def test_sqlite_create_with_rpm_and_list(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'llmserve.db'}"
    env = {**subprocess_env, "DATABASE_URL": url}
    ok(run(["keys", "create", "app", "--rpm", "3", "--concurrency", "1"], env, tmp_path))
    wait_for_minute_start()
    engine: Engine = make_engine(url)
    try:
        with make_sessions(engine)() as session:
            record = repositories.api_key_named(session, "app")
            assert record is not None
            principal = Principal(record.id, "app", False, KeyPolicy(rpm=3, concurrency=1))
    finally:
        engine.dispose()
    use(url, principal, [7, 7])
    found = limits(env, tmp_path, "app")
    assert found["rpm"]["limit"] == 3 and found["rpm"]["used"] == 2
    assert found["concurrency"] == {"limit": 1, "used": 0}
    table = ok(run(["keys", "list"], env, tmp_path)).stdout
    assert table_row(table, "app")[3:6] == ["2/3", "-", "0/1"]
