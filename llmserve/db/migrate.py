"""Applying and inspecting Alembic migrations from code (``migrate``, ``/ready``, tests)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def migrations_dir() -> Path:
    """``migrations/`` beside the package (a checkout, an editable install, or the wheel)."""
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str, stdout: TextIO | None = None) -> Config:
    config = Config(output_buffer=stdout, stdout=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser treats % as interpolation; URLs may contain %-escapes.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def upgrade_sql(url: str, revision: str = "head") -> str:
    """The SQL that ``upgrade`` would run, without running it."""
    buffer = io.StringIO()
    command.upgrade(alembic_config(url, stdout=buffer), revision, sql=True)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "the migrations directory has no head revision"
    return head
