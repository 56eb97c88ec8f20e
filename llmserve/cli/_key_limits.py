"""The options that set a key's limits (``keys create|update``), their parsing, and how a key's
usage against them is shown (``keys list``, ``stats --by key``).

Parsing only: the service checks what a limit may be (at least 1) and stores it. Bad input is one
red line and exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from llmserve import errors
from llmserve.cli._run import exit_code_for, fail
from llmserve.services.policy import parse_budget, parse_models
from llmserve.services.usage import KeyLimits

T = TypeVar("T")

#: What ``--clear`` removes; ``all`` is every one of them.
CLEARABLE = ("rpm", "tpm", "concurrency", "budget", "models")

Rpm = Annotated[
    str | None,
    typer.Option("--rpm", metavar="N", help="Requests per calendar minute, all servers together."),
]
Tpm = Annotated[
    str | None,
    typer.Option(
        "--tpm",
        metavar="N",
        help="Tokens (prompt + completion) per calendar minute, all servers together.",
    ),
]
Concurrency = Annotated[
    str | None,
    typer.Option("--concurrency", metavar="N", help="Generations running at once."),
]
Budget = Annotated[
    str | None,
    typer.Option(
        "--budget",
        metavar="N/PERIOD",
        help="Tokens per UTC day, week (from Monday) or month, e.g. 2000000/month.",
    ),
]
Models = Annotated[
    str | None,
    typer.Option(
        "--models",
        metavar="LIST",
        help="The only models the key may use: names or globs, e.g. 'qwen2.5:0.5b,llama3*'.",
    ),
]


_CLEARED: dict[str, dict[str, Any]] = {
    "rpm": {"rpm": None},
    "tpm": {"tpm": None},
    "concurrency": {"concurrency": None},
    "budget": {"budget": None, "budget_period": None},
    "models": {"models": ()},
}


def parse_limits(
    rpm: str | None,
    tpm: str | None,
    concurrency: str | None,
    budget: str | None,
    models: str | None,
) -> dict[str, Any]:
    """The ``KeyPolicy`` fields the options set; bad input is one red line (exit 2)."""
    found: dict[str, Any] = {}
    for name, text in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)):
        if text is not None:
            found[name] = _count(name, text)
    if budget is not None:
        tokens, period = parsed("--budget", parse_budget, budget)
        found["budget"], found["budget_period"] = _count("budget", str(tokens)), period
    if models is not None:
        found["models"] = parsed("--models", parse_models, models)
        if not found["models"]:
            fail(
                "--models: name at least one model or glob, e.g. llama3*,qwen2.5:0.5b "
                "(`keys update NAME --clear models` allows every model)",
                2,
            )
    return found


def parsed(option: str, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except errors.LlmserveError as exc:
        fail(f"{option}: {exc.detail}", exit_code_for(exc))


def _count(name: str, text: str) -> int:
    """A limit's number (the service says what it may be: at least 1, what its column holds)."""
    try:
        return int(text.strip())
    except ValueError:
        fail(f"--{name}: expected a whole number, got {text!r}", 2)


def cleared(values: list[str], setting: dict[str, Any]) -> dict[str, Any]:
    """The ``KeyPolicy`` fields ``--clear`` (repeatable, comma-separated) removes; a limit both
    set (in ``setting``) and cleared is an error."""
    names = [part.strip().lower() for value in values for part in value.split(",")]
    for name in names:
        if name not in (*CLEARABLE, "all"):
            fail(f"--clear: unknown limit {name!r}: use {', '.join(CLEARABLE)} or all", 2)
    changes: dict[str, Any] = {}
    for name in CLEARABLE if "all" in names else names:
        if name in setting:
            fail(f"--{name} and --clear {name} contradict each other", 2)
        changes.update(_CLEARED[name])
    return changes


def add_limit_columns(table: Table) -> None:
    for name in ("rpm", "tpm", "concurrency", "budget"):
        table.add_column(name, justify="right")
    table.add_column("models", overflow="fold")


def limit_cells(limits: KeyLimits | None) -> list[Text]:
    """used/limit for rpm, tpm, concurrency and the budget, then the allowed models; "-" for
    a limit the key does not have (models: every model)."""
    if limits is None:
        return [Text("-")] * 5
    policy = limits.policy
    budget = "-"
    if policy.budget is not None:
        budget = f"{_used(limits.tokens_this_period, policy.budget)} per {policy.budget_period}"
    return [
        Text(_used(limits.requests_this_minute, policy.rpm)),
        Text(_used(limits.tokens_this_minute, policy.tpm)),
        Text(_used(limits.running, policy.concurrency)),
        Text(budget),
        Text(",".join(policy.models) or "-"),
    ]


def limits_json(limits: KeyLimits | None) -> dict[str, Any] | None:
    """``{"rpm": {"limit", "used", "resets_at"}, "tpm": …, "concurrency": {"limit", "used"},
    "budget": {"limit", "period", "used", "resets_at"}, "models": [...]}``, each null when the
    key has no such limit (models: every model)."""
    if limits is None:
        return None
    policy = limits.policy
    minute = _iso(limits.minute_resets_at)

    def window(
        limit: int | None, used: int | None, resets_at: str | None, **more: Any
    ) -> dict[str, Any] | None:
        if limit is None:
            return None
        return {"limit": limit, **more, "used": used, "resets_at": resets_at}

    running = limits.running
    return {
        "rpm": window(policy.rpm, limits.requests_this_minute, minute),
        "tpm": window(policy.tpm, limits.tokens_this_minute, minute),
        "concurrency": (
            None if policy.concurrency is None else {"limit": policy.concurrency, "used": running}
        ),
        "budget": window(
            policy.budget,
            limits.tokens_this_period,
            _iso(limits.period_resets_at),
            period=policy.budget_period,
        ),
        "models": list(policy.models) or None,
    }


def _used(used: int | None, limit: int | None) -> str:
    return "-" if limit is None else f"{used or 0:,}/{limit:,}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
