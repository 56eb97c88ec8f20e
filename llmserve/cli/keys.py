"""``llmserve keys``: create, list and revoke API keys."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from llmserve import errors
from llmserve.cli._run import (
    fail,
    stdout_console,
    with_database,
)
from llmserve.cli.models import cli_actor
from llmserve.services.keys import KeyService, parse_duration

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
T = TypeVar("T")


def _with_keys(work: Callable[[KeyService], T]) -> T:
    return with_database(lambda sessions: work(KeyService(sessions)))


@app.command("create")
def create(
    name: str = typer.Argument(..., help="A name for the key (who or what uses it)."),
    admin: bool = typer.Option(False, "--admin", help="May pull, delete and switch models."),
    expires_in: str = typer.Option(None, "--expires-in", help="e.g. 30d, 12h, 2w."),
) -> None:
    """Create a key and print it once, alone on stdout. Only its hash is stored."""
    ttl = None
    if expires_in is not None:
        try:
            ttl = parse_duration(expires_in)
        except errors.LlmserveError as exc:
            fail(exc.detail, 2)
    key, record = _with_keys(
        lambda keys: keys.create(name, admin=admin, expires_in=ttl, actor=cli_actor())
    )
    sys.stdout.write(key + "\n")
    scope = "admin" if record.is_admin else "plain"
    Console(stderr=True).print(
        f"Created {scope} key {record.name} ({record.prefix}…). "
        "Store it now: it is not shown again.",
        markup=False,
    )


@app.command("list")
def list_keys(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per key.")
) -> None:
    """Show every key: name, prefix, scope, created, last used, expiry, revoked."""
    records = _with_keys(lambda keys: keys.list())
    if as_json:
        for r in records:
            row = {
                "name": r.name,
                "prefix": r.prefix,
                "scopes": ["generate", "models:read"] + (["admin"] if r.is_admin else []),
                "created_at": _iso(r.created_at),
                "last_used_at": _iso(r.last_used_at),
                "expires_at": _iso(r.expires_at),
                "revoked_at": _iso(r.revoked_at),
            }
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table("name", "prefix", "scopes", "created", "last used", "expires", "revoked")
    for r in records:
        table.add_row(
            r.name,
            r.prefix,
            "admin" if r.is_admin else "plain",
            _short(r.created_at),
            _short(r.last_used_at),
            _short(r.expires_at),
            _short(r.revoked_at),
        )
    stdout_console().print(table)


@app.command("revoke")
def revoke(ident: str = typer.Argument(..., help="The key's name or prefix.")) -> None:
    """Revoke a key: every server refuses it within a second."""
    record = _with_keys(lambda keys: keys.revoke(ident, actor=cli_actor()))
    Console(stderr=True).print(f"Revoked key {record.name} ({record.prefix}…)", markup=False)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _short(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else ""
