"""``llmserve keys``: create, update, list and revoke API keys, with their limits."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session, sessionmaker

from llmserve.cli._key_limits import (
    CLEARABLE,
    Budget,
    Concurrency,
    Models,
    Rpm,
    Tpm,
    add_limit_columns,
    cleared,
    limit_cells,
    limits_json,
    parse_limits,
    parsed,
)
from llmserve.cli._run import cli_actor, fail, stdout_console, with_database
from llmserve.db.tables import ApiKeyRecord
from llmserve.services.keys import KeyService, parse_duration, policy_of
from llmserve.services.policy import KeyPolicy
from llmserve.services.usage import KeyLimits, UsageService

app = typer.Typer(
    help="Create, update, list and revoke API keys and their limits.", no_args_is_help=True
)
T = TypeVar("T")


def _with_keys(work: Callable[[KeyService], T]) -> T:
    return with_database(lambda sessions: work(KeyService(sessions)))


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    admin: Annotated[
        bool, typer.Option("--admin", help="May pull, delete and switch models.")
    ] = False,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="e.g. 30d, 12h, 2w.")
    ] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    concurrency: Concurrency = None,
    budget: Budget = None,
    models: Models = None,
) -> None:
    """Create a key and print it once, alone on stdout. Only its hash is stored.

    Without limits the key may make any number of requests, on every model.
    """
    ttl = parsed("--expires-in", parse_duration, expires_in) if expires_in is not None else None
    policy = KeyPolicy(**parse_limits(rpm, tpm, concurrency, budget, models))
    key, record = _with_keys(
        lambda keys: keys.create(
            name, admin=admin, expires_in=ttl, policy=policy, actor=cli_actor()
        )
    )
    sys.stdout.write(key + "\n")
    scope = "admin" if record.is_admin else "plain"
    limits = f" with {policy.describe()}" if policy != KeyPolicy() else ""
    Console(stderr=True).print(
        f"Created {scope} key {record.name} ({record.prefix}…){limits}. "
        "Store it now: it is not shown again.",
        markup=False,
    )


@app.command("update")
def update(
    ident: Annotated[
        str, typer.Argument(metavar="NAME_OR_PREFIX", help="The key's name or prefix.")
    ],
    rpm: Rpm = None,
    tpm: Tpm = None,
    concurrency: Concurrency = None,
    budget: Budget = None,
    models: Models = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            metavar="LIMITS",
            help=f"Remove limits: any of {', '.join(CLEARABLE)} (comma-separated), or all. "
            "Clearing models lets the key use every model.",
        ),
    ] = None,
    admin: Annotated[
        bool | None,
        typer.Option("--admin/--no-admin", help="Give or take the admin scope."),
    ] = None,
) -> None:
    """Change a key's limits or scope; the options not given stay as they are.

    Every running server follows within a second.
    """
    changes = parse_limits(rpm, tpm, concurrency, budget, models)
    changes.update(cleared(clear or [], changes))
    if admin is not None:
        changes["admin"] = admin
    if not changes:
        fail("nothing to change: give a limit, --clear or --admin/--no-admin", 2)
    record = _with_keys(lambda keys: keys.update(ident, changes=changes, actor=cli_actor()))
    Console(stderr=True).print(
        f"Updated key {record.name} ({record.prefix}…): {_summary(record)}. "
        "Running servers follow within a second.",
        markup=False,
    )


@app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """Show every key: name, prefix, scope, limits and what it has used of them now, created,
    last used, expiry, revoked.

    A limit shows as used/limit: requests and tokens in the current calendar minute (rpm, tpm),
    generations running (concurrency), tokens in the budget's current UTC day, week or month.
    "-": no such limit (models: every model).
    """
    records, limits = with_database(_keys_and_limits)
    if as_json:
        for r in records:
            row = {
                "name": r.name,
                "prefix": r.prefix,
                "scopes": ["generate", "models:read"] + (["admin"] if r.is_admin else []),
                "limits": limits_json(limits[r.id]),
                "created_at": _iso(r.created_at),
                "last_used_at": _iso(r.last_used_at),
                "expires_at": _iso(r.expires_at),
                "revoked_at": _iso(r.revoked_at),
            }
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table("name", "prefix", "scopes")
    add_limit_columns(table)
    for name in ("created", "last used", "expires", "revoked"):
        table.add_column(name)
    for r in records:
        table.add_row(
            Text(r.name),
            r.prefix,
            "admin" if r.is_admin else "plain",
            *limit_cells(limits[r.id]),
            _short(r.created_at),
            _short(r.last_used_at),
            _short(r.expires_at),
            _short(r.revoked_at),
        )
    stdout_console().print(table)


@app.command("revoke")
def revoke(
    ident: Annotated[
        str, typer.Argument(metavar="NAME_OR_PREFIX", help="The key's name or prefix.")
    ],
) -> None:
    """Revoke a key: every server refuses it within a second."""
    record = _with_keys(lambda keys: keys.revoke(ident, actor=cli_actor()))
    Console(stderr=True).print(f"Revoked key {record.name} ({record.prefix}…)", markup=False)


def _keys_and_limits(
    sessions: sessionmaker[Session],
) -> tuple[list[ApiKeyRecord], dict[int, KeyLimits]]:
    records = KeyService(sessions).list()
    limits = UsageService(sessions).key_limits(records)
    return records, {found.key_id: found for found in limits}


def _summary(record: ApiKeyRecord) -> str:
    """``plain, rpm 10, models llama3*``."""
    scope = "admin" if record.is_admin else "plain"
    return f"{scope}, {(policy_of(record) or KeyPolicy()).describe()}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _short(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else ""
