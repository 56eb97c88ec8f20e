"""A small request log with known answers, shared by the query and CLI tests.

Relative to ``now``: eight rows in the last ten minutes over two models and two keys (plus rows
without a key), one row two days old and one forty days old.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from llmserve.db import repositories
from llmserve.db.tables import ApiKeyRecord

DAY = 24 * 60
ERROR = "backend exploded [bold]loudly[/bold]\nsecond line"

# minutes ago, model, key, status, prompt tokens, completion tokens, TTFT, duration, more
ROWS: list[tuple[float, str, str | None, str, int | None, int, float | None, float, dict]] = [
    (1, "m1", "alice", "ok", 10, 20, 100.0, 1000.0, {"request_id": "r1"}),
    (2, "m1", "alice", "ok", 10, 30, 200.0, 2000.0, {"route": "chat"}),
    (3, "m1", "bob", "ok", 5, 5, 300.0, 4000.0, {}),
    (4, "m1", "bob", "error", 5, 0, None, 50.0, {"error": ERROR}),
    (5, "m1", None, "timeout", 7, 0, None, 300000.0, {"error": "no first token"}),
    (6, "m2", "alice", "cancelled", 3, 2, 50.0, 500.0, {}),
    (7, "m2", None, "rejected", None, 0, None, 1.0, {"error": "queue full"}),
    (8, "m2", None, "ok", 4, 4, 80.0, 800.0, {"prompt": "secret prompt", "response": "answer"}),
    (2 * DAY, "m1", "alice", "ok", 100, 100, 9999.0, 9999.0, {}),
    (40 * DAY, "m2", "alice", "ok", 1, 1, 1.0, 1.0, {}),
]


def seed(sessions: sessionmaker[Session], now: datetime) -> dict[str, int]:
    """Write ``ROWS`` (and the keys alice and bob); return the key ids by name."""
    with sessions.begin() as session:
        keys = {
            name: repositories.add_api_key(
                session, ApiKeyRecord(name=name, prefix=f"llms_{name}", salt="00", key_hash="00")
            ).id
            for name in ("alice", "bob")
        }
        rows = [_row(now, keys, *spec) for spec in ROWS]
        repositories.insert_request_logs(session, rows)
    return keys


def _row(
    now: datetime,
    keys: dict[str, int],
    minutes: float,
    model: str,
    key: str | None,
    status: str,
    prompt_tokens: int | None,
    completion_tokens: int,
    ttft: float | None,
    duration: float,
    more: dict[str, Any],
) -> dict[str, Any]:
    return {
        "created_at": now - timedelta(minutes=minutes),
        "route": "generate",
        "model": model,
        "api_key_id": keys[key] if key else None,
        "status": status,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft_ms": ttft,
        "duration_ms": duration,
        "request_id": None,
        "error": None,
        "prompt": None,
        "response": None,
        **more,
    }
