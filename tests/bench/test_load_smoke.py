"""Smoke runs of the load benchmarks: each starts, measures every scenario, and prints its table.

Numbers are not checked (benchmarks never assert a speed); only that the harness works end to end,
with the shortest segments the scripts take (each still completes at least one request per worker).
Needs PostgreSQL on 127.0.0.1:5432, like the other benchmarks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "non-stream c=1",
    "non-stream c=16",
    "non-stream c=64",
    "stream c=1",
    "stream c=16",
    "stream c=64",
    "stream c=16, 20 ms/token",
    "stream c=16, 20 ms/token, independent",
    "chat c=1",
    "chat c=16",
    "chat c=64",
    "chat c=16, 20 ms/token",
    "tool calls c=16",
    "tool calls c=16, 20 ms/token",
    "non-stream c=16, limited key",
    "stream c=16, limited key",
    "ollama chat c=1",
    "ollama chat c=16",
    "ollama chat c=64",
    "ollama chat c=16, 20 ms/token",
    "openai chat c=1",
    "openai chat c=64",
    "anthropic messages c=1",
    "anthropic messages c=64",
    "openai responses c=1",
    "openai responses c=64",
]


def _postgres_up() -> bool:
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def _table(script: str, *args: str) -> tuple[str, list[list[str]]]:
    """Run a benchmark; its stdout and the cells of its table's rows."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    return result.stdout, [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


@pytest.mark.skipif(not _postgres_up(), reason="needs PostgreSQL on 127.0.0.1:5432")
def test_load_quick_prints_every_row() -> None:
    stdout, cells = _table("load.py", "--quick", "--duration", "0.02", "--slow-duration", "0.02")
    assert [(c[0], c[1]) for c in cells] == [
        (name, side) for name in SCENARIOS for side in ("direct", "llmserve")
    ]
    for c in cells:
        assert int(c[2]) > 0, c  # requests
        assert c[3] == "0", c  # errors
    assert "llmserve RSS" in stdout
    assert "request-log rows in the database" in stdout


@pytest.mark.skipif(not _postgres_up(), reason="needs PostgreSQL on 127.0.0.1:5432")
def test_ab_runs_two_checkouts_side_by_side() -> None:
    _, cells = _table(
        "ab.py", "--a", str(ROOT), "--stream", "--segment", "0.02", "--rounds", "2", "--warmup", "0"
    )
    assert [c[0] for c in cells] == ["A", "B", "B", "A", "A median", "B median"]
    for c in cells[:4]:
        assert int(c[2]) > 0 and c[3] == "0", c  # requests, errors
    assert all(float(c[6]) > 0 for c in cells[4:])  # a median time to first token


@pytest.mark.skipif(not _postgres_up(), reason="needs PostgreSQL on 127.0.0.1:5432")
def test_ab_client_runs_both_pools_side_by_side() -> None:
    # One zero-delay case: one double, two servers (the aiohttp one is checked by its own log).
    _, cells = _table("ab_client.py", "--quick", "--segment", "0.02", "--only", "^chat c=1$")
    assert [(c[0], c[1]) for c in cells] == [("chat c=1", "hand-written"), ("chat c=1", "aiohttp")]
    for c in cells:
        assert int(c[3]) > 0 and c[4] == "0", c  # requests, errors
    assert float(cells[1][9]) > 0  # the ratio aiohttp / hand-written
