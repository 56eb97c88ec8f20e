"""Where the tests' PostgreSQL comes from, in this order:

1. ``TEST_DATABASE_URL``;
2. a PostgreSQL reachable on 127.0.0.1:5432 (``postgres`` user, trust or PG* env auth);
3. ``postgres:16-alpine`` started by pytest-docker, where a Docker engine runs;
4. a throwaway cluster from local PostgreSQL binaries (pytest-postgresql).

For 2 to 4 a fresh database is created for the session and dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from llmserve.settings import normalise_database_url

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def _fresh_database(admin_url: str) -> Iterator[str]:
    """Create ``llmserve_test_<random>`` through ``admin_url``; drop it afterwards."""
    name = f"llmserve_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = admin_url.rpartition("/")
    try:
        yield normalise_database_url(f"{base}/{name}")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return result.returncode == 0


@contextlib.contextmanager
def _docker_postgres() -> Iterator[str]:
    compose = Path(__file__).parent / "docker-compose.test.yml"
    project = f"llmserve-test-{uuid.uuid4().hex[:8]}"
    base = ["docker", "compose", "-f", str(compose), "-p", project]
    subprocess.run([*base, "up", "-d", "--wait"], check=True, timeout=300)
    try:
        port = subprocess.run(
            [*base, "port", "db", "5432"], check=True, capture_output=True, text=True
        ).stdout.strip()
        host_port = int(port.rsplit(":", 1)[1])
        with _fresh_database(f"postgresql://postgres@127.0.0.1:{host_port}/postgres") as url:
            yield url
    finally:
        subprocess.run([*base, "down", "-v"], check=False, timeout=120)


@contextlib.contextmanager
def _local_binaries(tmp: Path) -> Iterator[str]:
    from pytest_postgresql.executor import PostgreSQLExecutor

    pg_ctl = shutil.which("pg_ctl") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None
    )
    if pg_ctl is None:
        raise RuntimeError("no PostgreSQL binaries found for pytest-postgresql")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executor = PostgreSQLExecutor(
        executable=pg_ctl,
        host="127.0.0.1",
        port=port,
        user="postgres",
        password="",
        dbname="postgres",
        options="",
        datadir=str(tmp / "pgdata"),
        unixsocketdir=str(tmp),
        logfile=str(tmp / "pg.log"),
        startparams="-w",
        postgres_options="",
    )
    with executor:
        executor.wait_for_postgres()
        with _fresh_database(f"postgresql://postgres@127.0.0.1:{port}/postgres") as url:
            yield url


@contextlib.contextmanager
def test_database(tmp: Path) -> Iterator[str]:
    """Yield a SQLAlchemy URL of an empty PostgreSQL database for this test session."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        yield normalise_database_url(explicit)
        return
    if _reachable("127.0.0.1", 5432):
        with _fresh_database(LOCAL) as url:
            yield url
        return
    if _docker_engine():
        with _docker_postgres() as url:
            yield url
        return
    with _local_binaries(tmp) as url:
        yield url
