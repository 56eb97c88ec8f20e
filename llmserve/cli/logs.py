"""``llmserve logs``: the latest request-log rows; ``llmserve logs prune``: delete old ones."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmserve import errors
from llmserve.cli._run import (
    fail,
    settings_or_exit,
    stdout_console,
    with_database,
)
from llmserve.services.keys import parse_duration
from llmserve.services.usage import STATUSES, LogEntry, UsageService, retention_period
from llmserve.settings import Settings

app = typer.Typer(
    help="Show the latest request-log rows (`logs prune` deletes old ones).",
    invoke_without_command=True,
)
T = TypeVar("T")

STATUS_STYLES = {
    "ok": "green",
    "error": "red",
    "timeout": "red",
    "cancelled": "yellow",
    "rejected": "magenta",
}


def with_usage(work: Callable[[UsageService], T], settings: Settings | None = None) -> T:
    """Run ``work`` against the configured database; failures become one red line."""
    return with_database(lambda sessions: work(UsageService(sessions)), settings)


def duration_option(value: str, option: str) -> timedelta:
    """``--since 1h`` and friends, or one red line naming the option."""
    try:
        return parse_duration(value)
    except errors.LlmserveError as exc:
        fail(f"{option}: {exc.detail}", 2)


@app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    limit: int = typer.Option(50, "--limit", "-n", help="How many rows, newest first."),
    status: str = typer.Option(None, "--status", help=f"Only this status: {', '.join(STATUSES)}."),
    since: str = typer.Option(None, "--since", help="Only the last ..., e.g. 1h, 30d."),
    model: str = typer.Option(None, "--model", help="Only this model."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per row."),
) -> None:
    """Show the latest request-log rows, newest first.

    Prompt and response text appear only for rows stored with LOG_PROMPTS=true.
    """
    if ctx.invoked_subcommand is not None:
        return
    window = duration_option(since, "--since") if since is not None else None
    entries = with_usage(
        lambda usage: usage.latest(limit=limit, status=status, since=window, model=model)
    )
    if as_json:
        for entry in entries:
            sys.stdout.write(json.dumps(_as_json(entry)) + "\n")
        return
    if not entries:
        Console(stderr=True).print("No request-log rows match.", markup=False)
        return
    stdout_console().print(_table(entries))


@app.command("prune")
def prune(
    older_than: str = typer.Option(
        None,
        "--older-than",
        help="Delete rows older than this, e.g. 30d, 12h. Default: REQUEST_LOG_RETENTION_DAYS.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
) -> None:
    """Delete request-log rows older than the given age (default: the retention setting)."""
    settings = settings_or_exit()
    if older_than is not None:
        age, label = duration_option(older_than, "--older-than"), older_than
    else:
        age = retention_period(settings)
        if age is None:
            fail("REQUEST_LOG_RETENTION_DAYS=0 keeps rows forever; pass --older-than to prune", 2)
        label = f"{age.days}d"
    if not yes and not sys.stdin.isatty():
        fail("pass --yes to delete without a confirmation prompt", 2)

    def work(usage: UsageService) -> int | None:
        if not yes:
            count = usage.count_older_than(age)
            question = f"Delete {count} request-log rows older than {label}?"
            if count == 0 or not typer.confirm(question, err=True):
                return None
        return usage.prune(age)

    deleted = with_usage(work, settings)
    if deleted is None:
        Console(stderr=True).print("Nothing deleted.", markup=False)
        return
    rows = "row" if deleted == 1 else "rows"
    Console(stderr=True).print(f"Deleted {deleted} request-log {rows} older than {label}.")


def _as_json(entry: LogEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "created_at": entry.created_at.isoformat(),
        "request_id": entry.request_id,
        "route": entry.route,
        "model": entry.model,
        "key": entry.key,
        "api_key_id": entry.api_key_id,
        "status": entry.status,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "ttft_ms": entry.ttft_ms,
        "duration_ms": entry.duration_ms,
        "error": entry.error,
        "prompt": entry.prompt,
        "response": entry.response,
    }


def _table(entries: list[LogEntry]) -> Table:
    texts = any(e.prompt is not None or e.response is not None for e in entries)
    table = Table("time (UTC)")
    for name in ("key", "model"):  # a narrow terminal wraps names rather than cut them
        table.add_column(name, overflow="fold")
    table.add_column("status")
    table.add_column("prompt tok", justify="right")
    table.add_column("compl tok", justify="right")
    table.add_column("TTFT ms", justify="right")
    table.add_column("duration ms", justify="right")
    table.add_column("route")
    table.add_column("error")
    if texts:
        table.add_column("prompt")
        table.add_column("response")
    for e in entries:
        cells = [
            Text(e.created_at.strftime("%Y-%m-%d %H:%M:%S")),
            Text(e.key if e.key is not None else key_label(e.api_key_id)),
            Text(e.model),
            Text(e.status, style=STATUS_STYLES.get(e.status, "")),
            Text(_number(e.prompt_tokens)),
            Text(_number(e.completion_tokens)),
            Text(_number(e.ttft_ms)),
            Text(_number(e.duration_ms)),
            Text(e.route),
            Text(shorten(e.error, 60), style="red"),
        ]
        if texts:
            cells += [Text(shorten(e.prompt, 40)), Text(shorten(e.response, 40))]
        table.add_row(*cells)
    return table


def key_label(api_key_id: int | None) -> str:
    """How a row without a key name shows: "-" without a key, "#id" for an unknown key."""
    return "-" if api_key_id is None else f"#{api_key_id}"


def shorten(value: str | None, width: int) -> str:
    """One line of at most ``width`` characters (tables must stay one row per request)."""
    if value is None:
        return ""
    flat = " ".join(value.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
