"""Key policy with real processes: two ``llmserve serve`` replicas share one limit, a crashed
replica's concurrency leases expire while a live replica's are renewed, and POLICY_FAIL_MODE
decides, both ways, what a key's limits do while the database is really unreachable: refusing
connections (``ALLOW_CONNECTIONS false``, sessions cut) or silent (a partition, played by a TCP
relay that stops carrying bytes).

The numbers each test measured (admitted per replica, refused, elapsed) are printed: ``-s``.
The replicas are forked from a warm interpreter (``running_server(warm=True)``): real processes
that skip seconds of imports each.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.engine import make_url

from llmserve.db import migrate
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import KeyLeaseRecord, KeyUsageRecord
from llmserve.services.keys import KeyService
from llmserve.services.policy import KeyPolicy
from tests._database import _fresh_database
from tests._server import ServerProcess, running_server
from tests._silent_link import SilentLink
from tests.fakes.ollama_double import OllamaDouble, Script

URL = "/api/v1/generate"
LEASE_S = 2.0
#: Each charged request of the fail-mode tests: 5 prompt tokens and 10 completion tokens.
TOKENS = 15


@dataclass(frozen=True)
class Outcome:
    replica: str
    status: int
    headers: httpx.Headers
    body: dict[str, object]


def make_key(db_url: str, name: str, **limits: object) -> tuple[int, dict[str, str]]:
    """Create a key with ``limits`` (``KeyPolicy`` fields); its id and its request headers."""
    engine = make_engine(db_url)
    try:
        key, record = KeyService(make_sessions(engine)).create(
            name, policy=KeyPolicy(**limits), actor="test"  # type: ignore[arg-type]
        )
    finally:
        engine.dispose()
    return record.id, {"Authorization": f"Bearer {key}"}


def minute_usage(db_url: str, key_id: int) -> tuple[int, int]:
    """(requests, tokens) of the key's rows of span ``minute``, summed."""
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            rows = session.scalars(
                select(KeyUsageRecord).where(
                    KeyUsageRecord.key_id == key_id, KeyUsageRecord.span == "minute"
                )
            ).all()
    finally:
        engine.dispose()
    return sum(row.requests for row in rows), sum(row.tokens for row in rows)


def leases(db_url: str, key_id: int) -> list[KeyLeaseRecord]:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return list(
                session.scalars(select(KeyLeaseRecord).where(KeyLeaseRecord.key_id == key_id))
            )
    finally:
        engine.dispose()


def wait_for_fresh_minute(margin_s: float = 10.0) -> datetime:
    """Sleep past the next minute boundary if fewer than ``margin_s`` seconds of this one
    remain, so that what follows happens in one calendar minute; that minute."""
    now = datetime.now(UTC)
    left = 60 - now.second - now.microsecond / 1e6
    if left < margin_s:
        time.sleep(left + 0.05)
    return this_minute()


def this_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def generate(server: ServerProcess, auth: dict[str, str], replica: str = "") -> Outcome:
    response = httpx.post(server.base_url + URL, json={"prompt": "x"}, headers=auth, timeout=10)
    return Outcome(replica, response.status_code, response.headers, response.json())


def assert_rate_limited(outcome: Outcome, *, limit: str) -> None:
    """A 429 of the key's rpm, with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers."""
    assert outcome.status == 429, outcome
    assert outcome.body["code"] == "rate_limited", outcome.body
    headers = outcome.headers
    assert 1 <= int(headers["retry-after"]) <= 60, headers
    assert headers["x-ratelimit-limit-requests"] == limit, headers
    assert headers["x-ratelimit-remaining-requests"] == "0", headers
    reset = headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 0 <= int(reset[:-1]) <= 60, headers


def tally(outcomes: list[Outcome]) -> str:
    admitted = {
        replica: sum(o.status == 200 for o in outcomes if o.replica == replica)
        for replica in ("A", "B")
    }
    refused = sum(o.status == 429 for o in outcomes)
    return f"admitted A={admitted['A']} B={admitted['B']}, refused {refused}"


# -- a cancelled stream pays for what it produced -----------------------------------------------


def test_a_stream_the_client_leaves_is_charged_what_was_produced(
    subprocess_env: dict[str, str], tmp_path: Path, db_url: str, ollama: OllamaDouble
) -> None:
    key_id, auth = make_key(db_url, "leaver", tpm=1_000_000)
    wait_for_fresh_minute(margin_s=15)
    env = {**subprocess_env, "AUTH_REQUIRED": "true"}
    with running_server(env, tmp_path, warm=True) as server:
        ollama.enqueue(Script(tokens=["t "] * 200, delay_s=0.02))
        body = {"prompt": "long", "stream": True}
        with httpx.stream("POST", server.base_url + URL, json=body, headers=auth) as response:
            for received, _line in enumerate(response.iter_lines(), start=1):
                if received == 10:
                    break
        record = ollama.wait_for_cancel(timeout=2.0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # charged in the background, once the row is logged
            requests, tokens = minute_usage(db_url, key_id)
            if tokens:
                break
            time.sleep(0.05)
    print(f"\n[cancelled stream] upstream sent {record.tokens_sent} of 200, charged {tokens}")
    assert requests == 1
    # What reached llmserve before it closed the upstream request, no more (prompt tokens are
    # unknown for a cut stream: Ollama reports them only at the end).
    assert 5 <= tokens <= record.tokens_sent < 200


# -- two replicas, one limit ------------------------------------------------------------------

RPM = 10


def in_one_minute(
    db_url: str, name: str, send: Callable[[dict[str, str]], list[Outcome]]
) -> tuple[int, list[Outcome], float]:
    """``send(auth)`` with a new key of ``RPM`` requests per minute, run again with another key
    if the run crossed a minute boundary: the key's id, the outcomes and the run's seconds."""
    for attempt in range(3):
        key_id, auth = make_key(db_url, f"{name}-{attempt}", rpm=RPM)
        minute, started = this_minute(), time.monotonic()
        outcomes = send(auth)
        if this_minute() == minute:
            return key_id, outcomes, time.monotonic() - started
    raise AssertionError("three runs in a row crossed a minute boundary")


def test_rpm_10_admits_exactly_10_in_total_sent_alternately_to_two_replicas(
    subprocess_env: dict[str, str], tmp_path: Path, db_url: str
) -> None:
    env = {**subprocess_env, "AUTH_REQUIRED": "true"}
    with (
        running_server(env, tmp_path, warm=True) as a,
        running_server(env, tmp_path, warm=True) as b,
    ):
        key_id, outcomes, elapsed = in_one_minute(
            db_url,
            "alternate",
            lambda auth: [
                generate(server, auth, name)
                for _ in range(8)
                for name, server in (("A", a), ("B", b))
            ],
        )
    numbers = f"alternately, 16 requests: {tally(outcomes)}, {elapsed:.2f} s"
    print(f"\n[two replicas, rpm {RPM}] {numbers}")
    assert [o.status for o in outcomes] == [200] * 10 + [429] * 6, numbers
    assert tally(outcomes) == "admitted A=5 B=5, refused 6", numbers
    for outcome in outcomes[10:]:
        assert_rate_limited(outcome, limit=str(RPM))
    assert minute_usage(db_url, key_id)[0] == RPM, "refused requests must count for nothing"


def test_rpm_10_admits_exactly_10_in_total_of_concurrent_requests_to_two_replicas(
    subprocess_env: dict[str, str], tmp_path: Path, db_url: str
) -> None:
    env = {**subprocess_env, "AUTH_REQUIRED": "true"}
    with (
        running_server(env, tmp_path, warm=True) as a,
        running_server(env, tmp_path, warm=True) as b,
    ):
        replicas = [("A", a), ("B", b)]

        def concurrently(auth: dict[str, str]) -> list[Outcome]:
            start = threading.Barrier(8)

            def send(i: int) -> Outcome:
                if i < 8:
                    start.wait()  # the first eight leave together
                name, server = replicas[i % 2]
                return generate(server, auth, name)

            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(send, range(24)))

        key_id, outcomes, elapsed = in_one_minute(db_url, "concurrent", concurrently)
    numbers = f"8 threads, 24 requests: {tally(outcomes)}, {elapsed:.2f} s"
    print(f"\n[two replicas, rpm {RPM}] {numbers}")
    assert sum(o.status == 200 for o in outcomes) == RPM, numbers
    assert sum(o.status == 429 for o in outcomes) == 24 - RPM, numbers
    for outcome in outcomes:
        if outcome.status == 429:
            assert_rate_limited(outcome, limit=str(RPM))
    assert minute_usage(db_url, key_id)[0] == RPM, "refused requests must count for nothing"


# -- concurrency leases -----------------------------------------------------------------------


def test_a_crashed_replicas_lease_expires_and_a_live_replicas_lease_is_renewed(
    subprocess_env: dict[str, str], tmp_path: Path, db_url: str, ollama: OllamaDouble
) -> None:
    key_id, auth = make_key(db_url, "one-at-a-time", concurrency=1)
    env = {**subprocess_env, "AUTH_REQUIRED": "true", "POLICY_LEASE_S": str(LEASE_S)}
    with (
        running_server(env, tmp_path, warm=True) as a,
        running_server(env, tmp_path, warm=True) as b,
    ):
        ollama.enqueue(Script(tokens=["t "] * 600, delay_s=0.05))  # ~30 s unless cut short
        received: list[float] = []
        first = threading.Event()

        def stream_on_a() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream(
                    "POST", a.base_url + URL, json={"prompt": "long", "stream": True}, headers=auth
                ) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        received.append(time.monotonic())
                        first.set()

        reader = threading.Thread(target=stream_on_a, daemon=True)
        reader.start()
        assert first.wait(10), "the long stream on A did not start"
        began = time.monotonic()

        # Live replica: after twice the lease's life its lease is still there (renewed), the
        # stream still flows, and the key's second generation is refused on the other replica.
        time.sleep(2 * LEASE_S + 0.5)
        refused_live = generate(b, auth, "B")
        assert refused_live.status == 429, refused_live
        assert refused_live.body["code"] == "rate_limited"
        assert "generations of this key are running" in str(refused_live.body["detail"])
        assert received[-1] > began + 2 * LEASE_S, "the stream on A stopped flowing"
        (crashed,) = leases(db_url, key_id)
        assert crashed.expires_at > datetime.now(UTC), "the live stream's lease was not renewed"

        # Crash: A dies without giving its lease back; B refuses until the lease expires.
        a.process.kill()
        a.process.wait(5)
        killed = time.monotonic()
        tokens_before_kill = len(received)
        polls: list[int] = []
        while True:
            outcome = generate(b, auth, "B")
            polls.append(outcome.status)
            if outcome.status != 429 or time.monotonic() - killed > LEASE_S + 5:
                break
            time.sleep(0.1)
        admitted_after = time.monotonic() - killed
        reader.join(5)
        # B's generation gave its own lease back; the dead one stays, expired, until pruned.
        deadline = time.monotonic() + 3
        while {x.id for x in leases(db_url, key_id)} - {crashed.id}:
            assert time.monotonic() < deadline, leases(db_url, key_id)
            time.sleep(0.1)
    numbers = (
        f"POLICY_LEASE_S={LEASE_S:g}: A streamed {tokens_before_kill} tokens over "
        f"{killed - began:.1f} s, its key refused on B after {2 * LEASE_S + 0.5:.1f} s; after "
        f"SIGKILL of A, B refused {polls.count(429)} times and admitted after "
        f"{admitted_after:.2f} s"
    )
    print(f"\n[leases] {numbers}")
    assert polls[0] == 429, f"the crashed replica's live lease must still count: {numbers}"
    assert polls[-1] == 200, numbers
    # The lease was renewed at most LEASE_S/3 before the crash: 2/3 to all of LEASE_S was left.
    assert LEASE_S / 3 <= admitted_after <= LEASE_S + 1.5, numbers


# -- POLICY_FAIL_MODE -------------------------------------------------------------------------


@pytest.fixture
def own_database(database_url: str) -> Iterator[tuple[str, str]]:
    """A migrated database of this test's own, which it may make unreachable: (its URL, the
    admin URL of its cluster)."""
    admin = make_url(database_url).set(drivername="postgresql", database="postgres")
    admin_url = admin.render_as_string(hide_password=False)
    with _fresh_database(admin_url) as url:
        migrate.upgrade(url)
        yield url, admin_url


@contextlib.contextmanager
def outage(url: str, admin_url: str) -> Iterator[None]:
    """The database refuses every connection and its sessions are cut, until the block ends."""
    database = make_url(url).database or ""
    name = sql.Identifier(database)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
    try:
        yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


def ready(server: ServerProcess) -> tuple[int, dict[str, str]]:
    response = httpx.get(server.base_url + "/ready", timeout=10)
    return response.status_code, response.json()["checks"]


def charged(ollama: OllamaDouble, server: ServerProcess, auth: dict[str, str]) -> Outcome:
    """A generation of ``TOKENS`` tokens."""
    ollama.enqueue(Script(tokens=["a"] * 10, prompt_eval_count=5))
    return generate(server, auth)


def test_fail_open_serves_known_keys_uncounted_and_charges_them_once_the_database_is_back(
    subprocess_env: dict[str, str],
    tmp_path: Path,
    ollama: OllamaDouble,
    own_database: tuple[str, str],
) -> None:
    url, admin_url = own_database
    key_id, limited = make_key(url, "limited", rpm=3)
    env = {
        **subprocess_env,
        "DATABASE_URL": url,
        "AUTH_REQUIRED": "true",
        "POLICY_FAIL_MODE": "open",
    }
    with running_server(env, tmp_path, warm=True) as server:
        minute = wait_for_fresh_minute()
        before = [charged(ollama, server, limited).status for _ in range(2)]
        assert before == [200, 200]
        assert minute_usage(url, key_id)[0] == 2

        with outage(url, admin_url):
            during = [charged(ollama, server, limited).status for _ in range(4)]
            unknown = generate(server, {"Authorization": "Bearer llms_" + "x" * 43})
            status, checks = ready(server)
            log_during = server.log()

        # Back: the server tries the database again (at most a second later) and counts
        # again: the minute's third request is admitted, the next one refused.
        ended = time.monotonic()
        after: list[Outcome] = []
        while not after or after[-1].status == 200:
            assert time.monotonic() - ended < 5, f"still not counted again: {after}"
            after.append(charged(ollama, server, limited))
            time.sleep(0.1)
        counted_again = time.monotonic() - ended
        assert this_minute() == minute, "the test crossed a minute boundary"
        log_after = server.log()
        status_after, checks_after = ready(server)

    served = 2 + 4 + (len(after) - 1)  # every generation of the key, each of TOKENS tokens
    deadline = time.monotonic() + 5
    while minute_usage(url, key_id) != (3, served * TOKENS) and time.monotonic() < deadline:
        time.sleep(0.1)
    print(
        f"\n[fail open] rpm 3: before the outage {before}, during it {during}, unknown key "
        f"{unknown.status}; /ready {status} {checks}; after it {[o.status for o in after]} "
        f"(refused again {counted_again:.2f} s after the database came back); the minute's "
        f"row (requests, tokens) = {minute_usage(url, key_id)}"
    )
    # Known keys are served beyond their rpm, uncounted; unknown keys are still refused.
    assert during == [200] * 4
    assert unknown.status == 401
    assert status == 503
    assert checks["database"].startswith("unavailable"), checks
    assert checks["policy"].startswith("degraded") and "(open)" in checks["policy"], checks
    assert log_during.count("POLICY_FAIL_MODE=open") == 1, log_during
    assert_rate_limited(after[-1], limit="3")
    assert log_after.count("POLICY_FAIL_MODE=open") == 1, log_after
    assert log_after.count("the database is back") == 1, log_after
    assert (status_after, checks_after["policy"]) == (200, "ok"), checks_after
    # The rpm counted 2 before and 1 after; every generation, the outage's too, was charged.
    assert minute_usage(url, key_id) == (3, served * TOKENS)


def test_fail_closed_refuses_limited_keys_with_503_and_serves_keys_without_limits(
    subprocess_env: dict[str, str],
    tmp_path: Path,
    ollama: OllamaDouble,
    own_database: tuple[str, str],
) -> None:
    url, admin_url = own_database
    _, limited = make_key(url, "limited", rpm=100, concurrency=4)
    _, free = make_key(url, "free")
    _, models_only = make_key(url, "models-only", models=("llama3*",))
    env = {
        **subprocess_env,
        "DATABASE_URL": url,
        "AUTH_REQUIRED": "true",
        "POLICY_FAIL_MODE": "closed",
    }
    with running_server(env, tmp_path, warm=True) as server:
        assert generate(server, limited).status == 200

        with outage(url, admin_url):
            refused = [generate(server, limited) for _ in range(3)]
            served = [generate(server, free).status, generate(server, models_only).status]
            status, checks = ready(server)
            log_during = server.log()

        ended = time.monotonic()
        back = [generate(server, limited)]
        while back[-1].status == 503 and time.monotonic() - ended < 5:
            time.sleep(0.1)
            back.append(generate(server, limited))
        served_again = time.monotonic() - ended
        log_after = server.log()

    print(
        f"\n[fail closed] limited key during the outage {[o.status for o in refused]}, keys "
        f"without limits {served}; /ready {status} {checks}; after it "
        f"{[o.status for o in back]} (served again {served_again:.2f} s after the database "
        f"came back)"
    )
    for outcome in refused:
        assert outcome.status == 503, outcome
        assert outcome.body["code"] == "policy_unavailable", outcome.body
        assert int(outcome.headers["retry-after"]) >= 1, outcome.headers
    assert served == [200, 200], "keys without counted limits need no database"
    assert status == 503
    assert checks["database"].startswith("unavailable"), checks
    assert checks["policy"].startswith("unavailable") and "(closed)" in checks["policy"], checks
    assert log_during.count("POLICY_FAIL_MODE=closed") == 1, log_during
    assert back[-1].status == 200, back
    assert log_after.count("POLICY_FAIL_MODE=closed") == 1, log_after
    assert log_after.count("the database is back") == 1, log_after


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_database_that_falls_silent_is_down_too(
    subprocess_env: dict[str, str],
    tmp_path: Path,
    own_database: tuple[str, str],
    mode: str,
) -> None:
    url, _ = own_database
    _, limited = make_key(url, "limited", rpm=100)
    _, free = make_key(url, "free")
    target = make_url(url)
    link = SilentLink(target.host or "127.0.0.1", target.port or 5432)
    relayed = target.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
    env = {
        **subprocess_env,
        "DATABASE_URL": relayed,
        "AUTH_REQUIRED": "true",
        "POLICY_FAIL_MODE": mode,
    }
    expected = 200 if mode == "open" else 503
    try:
        with running_server(env, tmp_path, warm=True) as server:
            assert generate(server, limited).status == 200
            link.silence()
            timings = []
            statuses = []
            for auth in (limited, limited, free):
                started = time.monotonic()
                statuses.append(generate(server, auth).status)
                timings.append(time.monotonic() - started)
            log_during = server.log()
            link.restore()
            ended = time.monotonic()
            while "the database is back" not in server.log():
                assert time.monotonic() - ended < 10, server.log()
                generate(server, limited)
                time.sleep(0.2)
            back = generate(server, limited)
    finally:
        link.close()
    print(
        f"\n[silent database, {mode}] limited, limited, unlimited key: {statuses} in "
        f"{', '.join(f'{t:.2f}' for t in timings)} s; after it {back.status}"
    )
    assert statuses == [expected, expected, 200], statuses
    assert timings[0] < 4, f"the first request waited {timings[0]:.2f} s for a silent database"
    assert timings[1] < 1, "the outage is known: the next request must not wait"
    assert log_during.count(f"POLICY_FAIL_MODE={mode}") == 1, log_during
    assert back.status == 200, back
