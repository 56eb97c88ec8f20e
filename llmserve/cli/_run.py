"""Shared plumbing for commands: settings, the one ``asyncio.run``, and failing cleanly.

Expected failures print one red line to stderr and exit non-zero; nothing here prints a
traceback. Each error type declares its exit code (``llmserve/errors.py``), next to its HTTP
status.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session, sessionmaker

from llmserve import errors
from llmserve.logging_setup import configure_logging
from llmserve.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

__all__ = [
    "backend_settings_or_exit",
    "cli_actor",
    "configure_logging",
    "fail",
    "failing_cleanly",
    "run",
    "settings_or_exit",
    "stdout_console",
]

EXIT_INTERRUPTED = 130

_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red line to stderr and exit with ``code``. ``message`` is printed as it is:
    brackets in it (``llmserve[embedded]``, a key named ``ci[nightly]``) are not Rich markup."""
    _stderr.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def exit_code_for(error: errors.LlmserveError) -> int:
    """The exit code ``error``'s type declares."""
    return error.exit_code


def settings_or_exit() -> Settings:
    """Load settings, or fail with the one line that names the bad variable."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), 2)


def backend_settings_or_exit() -> Settings:
    """Settings for a command that talks to the backend (its settings checked too), with
    logging quiet enough for a terminal."""
    settings = settings_or_exit()
    try:
        settings.check_backend()
    except SettingsError as exc:
        fail(str(exc), 2)
    configure_logging("WARNING")
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn llmserve errors into one red line and Ctrl-C into 130."""
    with failing_cleanly():
        return asyncio.run(coro)


@contextlib.contextmanager
def failing_cleanly() -> Iterator[None]:
    """Turn llmserve errors into one red line (their exit code) and Ctrl-C into exit 130."""
    try:
        yield
    except errors.LlmserveError as exc:
        fail(exc.detail, exit_code_for(exc))
    except KeyboardInterrupt:
        _stderr.print("[yellow]Interrupted.[/]")
        sys.stderr.flush()
        raise typer.Exit(EXIT_INTERRUPTED) from None


def cli_actor() -> str:
    """Who acts from the command line, for audit rows."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


def stdout_console() -> Console:
    """Rich output for data on stdout; wide when piped, so tables are not wrapped at 80."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def with_database(
    work: Callable[[sessionmaker[Session]], T], settings: Settings | None = None
) -> T:
    """Run ``work`` with sessions on the configured database (SQLite migrated on the way);
    llmserve errors and an unreachable database become one red line."""
    from sqlalchemy.exc import SQLAlchemyError

    from llmserve.db import migrate
    from llmserve.db.session import make_engine, make_sessions

    settings = settings or settings_or_exit()
    configure_logging("WARNING")
    engine = make_engine(settings.DATABASE_URL)
    try:
        if settings.is_sqlite:
            migrate.upgrade(settings.DATABASE_URL)
        return work(make_sessions(engine))
    except errors.LlmserveError as exc:
        fail(exc.detail, exit_code_for(exc))
    except SQLAlchemyError as exc:
        fail(f"the database is unavailable ({exc.__class__.__name__}); run `llmserve migrate`?", 7)
    finally:
        engine.dispose()
