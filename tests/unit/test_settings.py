"""Settings: defaults, normalisation, one-line errors, and .env.example kept in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmserve.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
#: Variables .env.example lists for docker compose and the container entrypoint, not llmserve.
COMPOSE_ONLY = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "DB_WAIT_TIMEOUT_S"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_spec_defaults() -> None:
    settings = load_settings(env_file=None)
    assert settings.DATABASE_URL == "sqlite:///./llmserve.db"
    assert settings.LLM_BACKEND == "ollama"
    assert settings.OLLAMA_BASE_URL == "http://localhost:11434"
    assert settings.HOST_BIND_IP == "127.0.0.1"
    assert settings.PORT == 8000
    assert settings.AUTH_REQUIRED is False
    assert settings.LOG_PROMPTS is False
    assert settings.MAX_PROMPT_CHARS == 200_000


@pytest.mark.parametrize("prefix", ["postgres://", "postgresql://", "postgresql+psycopg://"])
def test_postgres_urls_are_normalised(prefix: str) -> None:
    settings = load_settings(env_file=None, DATABASE_URL=f"{prefix}u:p@db:5432/x")
    assert settings.DATABASE_URL == "postgresql+psycopg://u:p@db:5432/x"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("LLM_BACKEND", "vllm"),
        ("OLLAMA_BASE_URL", "localhost:11434"),
        ("OLLAMA_BASE_URL", "http://host:notaport"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("FIRST_TOKEN_TIMEOUT_S", "-1"),
        ("MAX_PROMPT_CHARS", "0"),
        ("AUTH_REQUIRED", "maybe"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(env_file=None)
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BUILT_IN_OLLAMA_MODEL=phi3\nPORT=9001\nOPENAI_API_KEY=\n")
    settings = load_settings(env_file=env_file)
    assert settings.BUILT_IN_OLLAMA_MODEL == "phi3"
    assert settings.PORT == 9001
    assert settings.OPENAI_API_KEY is None


def test_ollama_backend_needs_the_built_in_model() -> None:
    settings = load_settings(env_file=None)
    with pytest.raises(SettingsError, match="BUILT_IN_OLLAMA_MODEL"):
        settings.check_backend()
    load_settings(env_file=None, BUILT_IN_OLLAMA_MODEL="llama3.2").check_backend()


def test_openai_backend_needs_its_url() -> None:
    settings = load_settings(env_file=None, LLM_BACKEND="openai")
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL"):
        settings.check_backend()


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a variable is listed twice"
    assert set(listed) - COMPOSE_ONLY == set(Settings.model_fields)


def test_compose_only_variables_are_really_used_there() -> None:
    compose = (ROOT / "docker-compose.yml").read_text() + (
        ROOT / "docker/entrypoint.sh"
    ).read_text()
    for name in COMPOSE_ONLY:
        assert name in compose, f"{name} is listed in .env.example but used nowhere"


def test_env_example_has_a_comment_for_every_variable() -> None:
    for block in (ROOT / ".env.example").read_text().split("\n\n"):
        lines = block.strip().splitlines()
        if any(re.match(r"^[A-Z][A-Z0-9_]*=", line) for line in lines):
            assert lines[0].startswith("#"), f"no comment above {lines[0]}"


def test_env_example_values_are_valid_settings() -> None:
    settings = load_settings(env_file=ROOT / ".env.example")
    settings.check_backend()
