"""``llmserve migrate``: apply the Alembic migrations (idempotent)."""

from __future__ import annotations

import sys

import typer

from llmserve.cli._run import configure_logging, fail, settings_or_exit


def migrate(
    revision: str = typer.Option("head", help="Target revision."),
    sql: bool = typer.Option(False, "--sql", help="Print the SQL instead of running it."),
) -> None:
    """Bring the database schema up to date."""
    from sqlalchemy.exc import SQLAlchemyError

    from llmserve.db import migrate as migrations

    settings = settings_or_exit()
    configure_logging("WARNING")
    try:
        if sql:
            sys.stdout.write(migrations.upgrade_sql(settings.DATABASE_URL, revision))
            return
        migrations.upgrade(settings.DATABASE_URL, revision)
    except SQLAlchemyError as exc:
        fail(f"cannot migrate the database: {exc.__class__.__name__}: {_first_line(exc)}", 7)
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown revision: one line, no traceback
        fail(f"cannot migrate the database: {_first_line(exc)}", 1)
    target = migrations.head_revision() if revision == "head" else revision
    typer.echo(f"Database is at revision {target}.", err=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
