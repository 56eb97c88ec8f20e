"""``llmserve migrate``: apply the Alembic migrations (idempotent).

Exit codes, which the container's entrypoint relies on: 0 done; 2 a bad setting (one line
naming it; retrying cannot help); 7 the database server is unavailable (the entrypoint retries);
1 any other failure, such as an unknown revision or a SQLite file that cannot be opened. With
``LOG_FORMAT=json`` every line is a JSON object, Alembic's progress included.
"""

from __future__ import annotations

import logging
import sys

import typer

from llmserve.cli._run import configure_logging
from llmserve.cli._startup import EXIT_DATABASE_UNAVAILABLE, startup_settings, stop

log = logging.getLogger("llmserve.cli")


def migrate(
    revision: str = typer.Option("head", help="Target revision."),
    sql: bool = typer.Option(False, "--sql", help="Print the SQL instead of running it."),
) -> None:
    """Bring the database schema up to date."""
    from sqlalchemy.exc import SQLAlchemyError

    from llmserve.db import migrate as migrations

    settings = startup_settings(backend=False)
    log_format = settings.LOG_FORMAT
    if log_format == "json":
        configure_logging(settings.LOG_LEVEL, "json")
    else:
        configure_logging("WARNING")
    try:
        if sql:
            sys.stdout.write(migrations.upgrade_sql(settings.DATABASE_URL, revision))
            return
        migrations.upgrade(settings.DATABASE_URL, revision)
    except SQLAlchemyError as exc:
        message = f"cannot migrate the database: {exc.__class__.__name__}: {_first_line(exc)}"
        # A server may come up if we wait; a SQLite file that cannot be opened will not.
        stop(message, 1 if settings.is_sqlite else EXIT_DATABASE_UNAVAILABLE, log_format)
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown revision: one line, no traceback
        stop(f"cannot migrate the database: {_first_line(exc)}", 1, log_format)
    target = migrations.head_revision() if revision == "head" else revision
    if log_format == "json":
        log.info("Database is at revision %s.", target)
    else:
        typer.echo(f"Database is at revision {target}.", err=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
