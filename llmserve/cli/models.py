"""``llmserve models``: list, pull, delete, switch, active — the same service as the API, or
a running llmserve's API with ``--server``."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from llmserve.cli._client import (
    Client,
    api_key_option,
    check_delete,
    connected,
    open_client,
    server_option,
)
from llmserve.cli._run import cli_actor, fail, failing_cleanly, run, stdout_console

__all__ = ["app", "cli_actor"]

app = typer.Typer(help="List, pull, delete and switch models.", no_args_is_help=True)
T = TypeVar("T")


def _backend_option(action: str) -> Any:
    return typer.Option(
        None,
        "--backend",
        metavar="URL",
        help=f"With several backend servers: {action} this one only (its base URL as "
        "configured); every server by default.",
    )


def _with_client(
    server: str | None, api_key: str | None, work: Callable[[Client], Awaitable[T]]
) -> T:
    client = open_client(server, api_key)

    async def main() -> T:
        async with client:
            return await work(client)

    return run(main())


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model."),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Show installed models."""

    async def work(client: Client) -> None:
        entries = (await client.models()).models
        if as_json:
            for e in entries:
                row = {
                    "name": e.name,
                    "size": e.size,
                    "modified_at": e.modified_at.isoformat() if e.modified_at else None,
                    "digest": e.digest,
                    "active": e.active,
                    "built_in": e.built_in,
                }
                sys.stdout.write(json.dumps(row) + "\n")
            return
        table = Table("name", "size", "modified", "active", "built-in")
        for e in entries:
            table.add_row(
                e.name,
                _size(e.size),
                e.modified_at.strftime("%Y-%m-%d %H:%M") if e.modified_at else "",
                "✓" if e.active else "",
                "✓" if e.built_in else "",
            )
        stdout_console().print(table)

    _with_client(server, api_key, work)


@app.command("active")
def active(server: str = server_option(), api_key: str = api_key_option()) -> None:
    """Print the active model."""

    async def work(client: Client) -> None:
        sys.stdout.write(await client.active() + "\n")

    _with_client(server, api_key, work)


@app.command("switch")
def switch(
    name: str = typer.Argument(..., help="An installed model."),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Make NAME the active model for every server."""

    async def work(client: Client) -> None:
        await client.switch(name)
        Console(stderr=True).print(f"Switched active model to {name}", markup=False)

    _with_client(server, api_key, work)


@app.command("delete")
def delete(
    name: str = typer.Argument(..., help="An installed model."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    backend: str = _backend_option("delete it from"),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Delete an installed model (never the built-in one, nor the active one). The rules are
    checked first; only a delete they allow asks for confirmation (or --yes)."""
    client = open_client(server, api_key)
    with failing_cleanly(), connected(client) as loop:
        client.validate(name)
        check_delete(name, loop.run(client.models()))
        if not yes:
            if not sys.stdin.isatty():
                fail(f"refusing to delete {name} without confirmation: pass --yes", 2)
            typer.confirm(f"Delete model {name}?", abort=True)
        loop.run(client.delete(name, backend or None))
    Console(stderr=True).print(f"Deleted model {name}", markup=False)


@app.command("pull")
def pull(
    name: str = typer.Argument(..., help="Model to install, e.g. llama3.2."),
    backend: str = _backend_option("install it on"),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Install a model, with a progress bar per layer. Ctrl-C cancels."""

    async def work(client: Client) -> None:
        stderr = Console(stderr=True)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        tasks: dict[str, TaskID] = {}
        items = client.pull(name, backend or None)
        item = await anext(items, None)  # a refusal (unknown model…) is one line, with no bar
        with Progress(*columns, console=stderr, transient=False) as progress:
            status = progress.add_task("pulling manifest", total=None)
            while item is not None:
                if item.digest and item.total:
                    if item.digest not in tasks:
                        tasks[item.digest] = progress.add_task(
                            item.digest.removeprefix("sha256:")[:12], total=item.total
                        )
                    progress.update(tasks[item.digest], completed=item.completed or 0)
                else:
                    progress.update(status, description=item.status)
                item = await anext(items, None)
            progress.update(status, total=1, completed=1)
        stderr.print(f"Pulled {name}", markup=False)

    _with_client(server, api_key, work)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
