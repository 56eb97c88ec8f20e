"""What the container's commands, ``migrate`` and ``serve``, check before they start.

A container's entrypoint runs ``migrate`` and then becomes ``serve``, and its restart policy
starts it again whenever it stops. So these two commands sort every failure they can foresee
into one of two exits, each reported as one line (one JSON object when ``LOG_FORMAT=json``, like
the server's own log lines), never a traceback:

* exit 2, ``EXIT_CONFIG``: a setting is wrong (a malformed value, a backend that lacks what it
  needs, a SQLite file in a folder this user cannot write). Retrying cannot help; the line names
  the variable.
* exit 7, the database error's code: the database is not reachable (yet). The entrypoint waits
  and retries.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, NoReturn

import typer

from llmserve import errors
from llmserve.cli._run import fail
from llmserve.logging_setup import configure_logging
from llmserve.settings import Settings, SettingsError, load_settings, requested_log_format

EXIT_CONFIG = 2
EXIT_DATABASE_UNAVAILABLE = errors.DatabaseUnavailableError.exit_code

log = logging.getLogger("llmserve.cli")


def stop(message: str, code: int, log_format: Literal["text", "json"]) -> NoReturn:
    """Report ``message`` as one line in ``log_format`` and exit with ``code``."""
    if log_format == "json":
        configure_logging("INFO", "json")
        log.error(message)
        raise typer.Exit(code)
    fail(message, code)


def startup_settings(*, backend: bool) -> Settings:
    """The settings, checked as far as the command needs (``backend``: what the engine needs
    too, and the SQLite folder is writable), or exit ``EXIT_CONFIG`` with the line naming the
    variable."""
    try:
        settings = load_settings()
        if backend:
            settings.check_backend()
        check_sqlite_folder(settings)
    except SettingsError as exc:
        stop(str(exc), EXIT_CONFIG, requested_log_format())
    return settings


def check_sqlite_folder(settings: Settings) -> None:
    """A SQLite ``DATABASE_URL`` must name a file this user can create or write: otherwise
    SQLite reports only "unable to open database file", which looks like an outage."""
    from sqlalchemy.engine import make_url

    if not settings.is_sqlite:
        return
    database = make_url(settings.DATABASE_URL).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser().absolute()
    folder, uid = path.parent, os.getuid()
    if path.exists():
        problem = None if os.access(path, os.W_OK) else f"{path} is not writable by uid {uid}"
    elif folder.is_dir():
        writable = os.access(folder, os.W_OK | os.X_OK)
        problem = None if writable else f"the folder {folder} is not writable by uid {uid}"
    else:
        problem = f"the folder {folder} does not exist"
    if problem is not None:
        raise SettingsError(
            f"invalid setting DATABASE_URL: cannot write the SQLite database {path}: {problem}; "
            "point it at a writable folder (in a container, a mounted volume)"
        )
