"""Shared fixtures: a real PostgreSQL database, the Ollama double, settings, servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from llmserve.db import migrate
from llmserve.db.base import Base
from llmserve.db.session import make_engine
from llmserve.settings import Settings, load_settings
from tests._database import test_database

if TYPE_CHECKING:
    from tests.fakes.ollama_double import OllamaDouble

BUILT_IN = "llama3.2"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated PostgreSQL database for the whole session."""
    with test_database(tmp_path_factory.mktemp("pg")) as url:
        engine = make_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()
        migrate.upgrade(url)
        yield url


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    """The session database, emptied after each test (servers in other processes see it too)."""
    yield database_url
    engine = make_engine(database_url)
    with engine.begin() as conn:
        names = ", ".join(table.name for table in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    engine.dispose()


@pytest.fixture(scope="session")
def ollama_server() -> Iterator[OllamaDouble]:
    from tests.fakes.ollama_double import OllamaDouble

    with OllamaDouble.running(models=[BUILT_IN, "qwen2.5:0.5b"]) as double:
        yield double


@pytest.fixture
def ollama(ollama_server: OllamaDouble) -> Iterator[OllamaDouble]:
    """The session's Ollama double, with fresh scripts and records for each test."""
    ollama_server.reset()
    for name in list(ollama_server.models):
        ollama_server.remove_model(name)
    ollama_server.add_model(BUILT_IN)
    ollama_server.add_model("qwen2.5:0.5b")
    yield ollama_server
    ollama_server.reset()


@pytest.fixture
def env(db_url: str, ollama: OllamaDouble) -> dict[str, str]:
    """Environment variables for an llmserve process wired to the test database and double."""
    return {
        "DATABASE_URL": db_url,
        "LLM_BACKEND": "ollama",
        "OLLAMA_BASE_URL": ollama.base_url,
        "BUILT_IN_OLLAMA_MODEL": BUILT_IN,
        "SSE_PING_INTERVAL_S": "15",
        "LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env_file=None, **env)


@pytest.fixture(scope="session")
def llama_cpp_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on the real 270M model, started once for
    every module that uses ``tests.backends.test_openai_backend.server_url``."""
    from tests.backends.test_openai_backend import llama_cpp_server

    with llama_cpp_server(tmp_path_factory.mktemp("llama-server")) as url:
        yield url


@pytest.fixture
def subprocess_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A clean environment for CLI and server subprocesses (no stray .env, no inherited config)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {**keep, **env, "PYTHONUNBUFFERED": "1"}
