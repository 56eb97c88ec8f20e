"""Shared helpers for the double's own tests (the fixtures live in ``conftest.py`` beside it)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

BUILT_IN = "llama3.2"
OTHER = "qwen2.5:0.5b"
CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
JSON_UTF8 = "application/json; charset=utf-8"


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse an NDJSON body, checking the framing: compact objects, each ending in a newline."""
    body = response.text
    assert body.endswith("\n")
    parsed = []
    for line in body.removesuffix("\n").split("\n"):
        value = json.loads(line)
        assert line == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        parsed.append(value)
    return parsed
