"""``llmserve models``: list, pull, delete, switch, active — the same service as the API."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

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

from llmserve.cli._run import backend_settings_or_exit, fail, run, stdout_console
from llmserve.runtime import Runtime

app = typer.Typer(help="List, pull, delete and switch models.", no_args_is_help=True)
T = TypeVar("T")


def cli_actor() -> str:
    """Who acts from the command line, for audit rows."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


def _with_runtime(work: Callable[[Runtime], Awaitable[T]]) -> T:
    settings = backend_settings_or_exit()

    async def main() -> T:
        async with Runtime(settings, follow_active_model=False) as runtime:
            return await work(runtime)

    return run(main())


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model."),
) -> None:
    """Show installed models."""

    async def work(runtime: Runtime) -> None:
        entries = await runtime.models.list()
        if as_json:
            for e in entries:
                row = {
                    "name": e.info.name,
                    "size": e.info.size,
                    "modified_at": e.info.modified_at.isoformat() if e.info.modified_at else None,
                    "digest": e.info.digest,
                    "active": e.active,
                    "built_in": e.built_in,
                }
                sys.stdout.write(json.dumps(row) + "\n")
            return
        table = Table("name", "size", "modified", "active", "built-in")
        for e in entries:
            table.add_row(
                e.info.name,
                _size(e.info.size),
                e.info.modified_at.strftime("%Y-%m-%d %H:%M") if e.info.modified_at else "",
                "✓" if e.active else "",
                "✓" if e.built_in else "",
            )
        stdout_console().print(table)

    _with_runtime(work)


@app.command("active")
def active() -> None:
    """Print the active model."""

    async def work(runtime: Runtime) -> None:
        sys.stdout.write(runtime.models.active + "\n")

    _with_runtime(work)


@app.command("switch")
def switch(name: str = typer.Argument(..., help="An installed model.")) -> None:
    """Make NAME the active model for every server."""

    async def work(runtime: Runtime) -> None:
        await runtime.models.switch(name, actor=cli_actor(), warm=False)
        Console(stderr=True).print(f"Switched active model to {name}", markup=False)

    _with_runtime(work)


@app.command("delete")
def delete(
    name: str = typer.Argument(..., help="An installed model."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete an installed model (never the built-in one, nor the active one)."""
    if not yes:
        if not sys.stdin.isatty():
            fail(f"refusing to delete {name} without confirmation: pass --yes", 2)
        typer.confirm(f"Delete model {name}?", abort=True)

    async def work(runtime: Runtime) -> None:
        await runtime.models.delete(name, actor=cli_actor())
        Console(stderr=True).print(f"Deleted model {name}", markup=False)

    _with_runtime(work)


@app.command("pull")
def pull(name: str = typer.Argument(..., help="Model to install, e.g. llama3.2.")) -> None:
    """Install a model, with a progress bar per layer. Ctrl-C cancels."""

    async def work(runtime: Runtime) -> None:
        stderr = Console(stderr=True)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        tasks: dict[str, TaskID] = {}
        with Progress(*columns, console=stderr, transient=False) as progress:
            status = progress.add_task("pulling manifest", total=None)
            async for item in runtime.models.pull(name, actor=cli_actor()):
                if item.digest and item.total:
                    if item.digest not in tasks:
                        tasks[item.digest] = progress.add_task(
                            item.digest.removeprefix("sha256:")[:12], total=item.total
                        )
                    progress.update(tasks[item.digest], completed=item.completed or 0)
                else:
                    progress.update(status, description=item.status)
            progress.update(status, total=1, completed=1)
        stderr.print(f"Pulled {name}", markup=False)

    _with_runtime(work)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
