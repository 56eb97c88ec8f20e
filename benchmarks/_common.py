"""Shared helpers for the benchmark scripts: a throwaway database, statistics, a results table.

Benchmarks report numbers; they never assert a speed. Results go to stdout, progress to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import func, select

from llmserve.db import migrate
from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from llmserve.settings import normalise_database_url

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

log = logging.getLogger("benchmarks")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Only the benchmark's own progress at INFO: not httpx's line per request, Alembic's
    # migration chatter, or llmserve's (and llama.cpp's) log when used in-process.
    for name in ("httpx", "alembic", "llmserve"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def throwaway_postgres(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create and migrate ``llmserve_bench_<random>`` through ``admin_url``; drop it afterwards."""
    name = f"llmserve_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = admin_url.rpartition("/")
    url = normalise_database_url(f"{base}/{name}")
    try:
        migrate.upgrade(url)
        log.info("using throwaway database %s", name)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        log.info("dropped database %s", name)


@contextlib.contextmanager
def benchmark_database(url: str | None, admin_url: str = ADMIN_URL) -> Iterator[str]:
    """``url`` migrated (it is the caller's, so it is kept), or a throwaway PostgreSQL database."""
    if not url:
        with throwaway_postgres(admin_url) as fresh:
            yield fresh
        return
    url = normalise_database_url(url)
    migrate.upgrade(url)
    yield url


def count_request_logs(url: str) -> int:
    """Rows in the request log: proof that the timed requests were logged like real ones."""
    engine = make_engine(url)
    try:
        with make_sessions(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(RequestLogRecord)) or 0)
    finally:
        engine.dispose()


def server_env(**extra: str) -> dict[str, str]:
    """A minimal environment for ``llmserve serve``: nothing leaks in from the caller's shell."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {"LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **keep, **extra}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "min": min(values),
        "max": max(values),
    }


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A small Markdown table on stdout (pastes straight into the README)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"
