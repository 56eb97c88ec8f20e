"""``llmserve stats``: usage per model or per API key over a window; per key, also its limits
and what it has used of them now."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmserve.cli._key_limits import add_limit_columns, limit_cells, limits_json
from llmserve.cli._run import stdout_console
from llmserve.cli.logs import duration_option, key_label, with_usage
from llmserve.services.usage import KeyLimits, UsageStats


def stats(
    since: str = typer.Option("24h", "--since", help="The window, e.g. 1h, 24h, 30d."),
    by: str = typer.Option("model", "--by", help="Group by model or key."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model or key."),
) -> None:
    """Requests, errors, tokens and latency percentiles per model or per key.

    Errors: requests that ended in error or timeout. Latencies: over successful requests.
    With --by key, also each key's limits and what it has used of them now (used/limit):
    requests and tokens this calendar minute (rpm, tpm), generations running (concurrency),
    tokens this UTC day, week or month (budget), and its allowed models; "-": no such limit.
    Keys with limits but no request in the window are listed too.
    """
    window = duration_option(since, "--since")
    if by == "key":
        found = with_usage(lambda usage: usage.stats_by_key(since=window))
        groups = [(entry.usage, entry.limits) for entry in found]
    else:
        groups = [(g, None) for g in with_usage(lambda usage: usage.stats(since=window, by=by))]
    if as_json:
        for group, limits in groups:
            row = _as_json(group, by, since)
            if by == "key":
                row["limits"] = limits_json(limits)
            sys.stdout.write(json.dumps(row) + "\n")
        return
    if not groups:
        Console(stderr=True).print(f"No requests in the last {since}.", markup=False)
        return
    stdout_console().print(_table(groups, by, since))


def _as_json(group: UsageStats, by: str, since: str) -> dict[str, object]:
    row: dict[str, object] = {by: group.group}
    if by == "key":
        row["api_key_id"] = group.api_key_id
    return {
        **row,
        "window": since,
        "requests": group.requests,
        "errors": group.errors,
        "error_rate": round(group.error_rate, 4),
        "cancelled": group.cancelled,
        "rejected": group.rejected,
        "prompt_tokens": group.prompt_tokens,
        "completion_tokens": group.completion_tokens,
        "ttft_p50_ms": _rounded(group.ttft_p50),
        "ttft_p95_ms": _rounded(group.ttft_p95),
        "duration_p50_ms": _rounded(group.duration_p50),
        "duration_p95_ms": _rounded(group.duration_p95),
    }


def _table(groups: list[tuple[UsageStats, KeyLimits | None]], by: str, since: str) -> Table:
    caption = f"last {since}; latencies in ms over successful requests"
    if by == "key":
        caption += "; limits: used/limit now"
    table = Table(caption=caption)
    table.add_column(by, overflow="fold")  # a narrow terminal wraps names rather than cut them
    for name in ("requests", "errors", "error rate", "cancelled", "rejected"):
        table.add_column(name, justify="right")
    for name in ("prompt tok", "compl tok", "TTFT p50", "TTFT p95", "dur p50", "dur p95"):
        table.add_column(name, justify="right")
    if by == "key":
        add_limit_columns(table)
    for g, limits in groups:
        label = g.group if g.group is not None else key_label(g.api_key_id)
        table.add_row(
            Text(label),
            f"{g.requests:,}",
            Text(f"{g.errors:,}", style="red" if g.errors else ""),
            f"{g.error_rate:.1%}",
            f"{g.cancelled:,}",
            f"{g.rejected:,}",
            f"{g.prompt_tokens:,}",
            f"{g.completion_tokens:,}",
            *(_ms(v) for v in (g.ttft_p50, g.ttft_p95, g.duration_p50, g.duration_p95)),
            *(limit_cells(limits) if by == "key" else []),
        )
    return table


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
