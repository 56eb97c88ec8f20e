"""OLLAMA_BASE_URL / OPENAI_BASE_URL as a comma-separated list of servers."""

from __future__ import annotations

import pytest

from llmserve.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_one_server_is_unchanged() -> None:
    settings = load_settings(env_file=None, OLLAMA_BASE_URL=" http://gpu1:11434/ ")
    assert settings.OLLAMA_BASE_URL == "http://gpu1:11434"
    assert settings.backend_urls == ["http://gpu1:11434"]


def test_a_list_keeps_its_order_without_spaces_or_trailing_slashes() -> None:
    value = "http://gpu1:11434/, http://gpu2:11434 ,https://gpu3.example/ollama/"
    settings = load_settings(env_file=None, OLLAMA_BASE_URL=value)
    expected = ["http://gpu1:11434", "http://gpu2:11434", "https://gpu3.example/ollama"]
    assert settings.backend_urls == expected
    openai = load_settings(
        env_file=None, LLM_BACKEND="openai", OPENAI_BASE_URL="http://a:8000/v1,http://b:8000"
    )
    assert openai.backend_urls == ["http://a:8000/v1", "http://b:8000"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://a:1,,http://b:2", "empty entry"),
        ("http://a:1,", "empty entry"),
        ("http://a:1,ftp://b", "http:// or https://"),
        ("http://a:1,http://b:99999", "invalid port"),
        ("http://a:1,http://a:1/", "the same server twice"),
    ],
)
def test_a_bad_list_is_one_line_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"OLLAMA_BASE_URL: .*{message}"):
        load_settings(env_file=None, OLLAMA_BASE_URL=value)
