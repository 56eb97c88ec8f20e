"""``migrate`` and ``serve`` as the container's entrypoint runs them: a bad setting is one line
naming the variable and exit 2 (which the entrypoint does not retry), never a traceback or
uvicorn's exit 3; with ``LOG_FORMAT=json`` every line they print is a JSON object.

Real subprocesses; nothing here needs the database server or the Ollama double, since every case
stops (or, for migrate, finishes on a SQLite file) before either would be used. Two start cold, as
the entrypoint starts them; the others are forked from a warm interpreter (``tests/_cli_fork.py``),
which prints again whatever importing the commands printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._cli_fork import run as forked
from tests.e2e._cli import assert_one_red_line, run

# Imports llmserve with llama_cpp hidden (find_spec then finds nothing), as in an image
# built without the embedded extra.
HIDE_LLAMA = "import sys; sys.modules['llama_cpp'] = None"
WITHOUT_LLAMA = (
    f"{HIDE_LLAMA}; sys.argv = ['llmserve', *sys.argv[1:]]; from llmserve.cli import main; main()"
)


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {
        **keep,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'llmserve.db'}",
        "BUILT_IN_OLLAMA_MODEL": "llama3.2",
        "OLLAMA_BASE_URL": "http://127.0.0.1:9",
    }


def _run_without_llama(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_LLAMA, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_embedded_without_the_engine_stops_serve_with_one_line(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    result = _run_without_llama(["serve"], {**base_env, "LLM_BACKEND": "embedded"}, tmp_path)
    assert_one_red_line(result)
    assert "LLM_BACKEND" in result.stderr and "llama-cpp-python" in result.stderr
    assert result.returncode == 2


def test_an_embedded_model_path_that_is_no_file_stops_serve_with_one_line(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**base_env, "LLM_BACKEND": "embedded", "EMBEDDED_MODEL_PATH": str(tmp_path / "no.gguf")}
    result = forked(["serve"], env, tmp_path)
    assert_one_red_line(result)
    assert "EMBEDDED_MODEL_PATH" in result.stderr
    assert result.returncode == 2


@pytest.mark.parametrize("command", [["migrate"], ["serve"]])
def test_a_sqlite_file_in_a_missing_folder_is_a_bad_setting_not_an_outage(
    base_env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    env = {**base_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'absent' / 'llmserve.db'}"}
    result = forked(command, env, tmp_path)
    assert_one_red_line(result)
    assert "DATABASE_URL" in result.stderr and "does not exist" in result.stderr
    assert result.returncode == 2  # not 7, which the entrypoint would retry for a minute


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_a_sqlite_file_in_a_read_only_folder_is_a_bad_setting(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    env = {**base_env, "DATABASE_URL": f"sqlite:///{folder / 'llmserve.db'}"}
    result = run(["migrate"], env, tmp_path)
    assert_one_red_line(result)
    assert "DATABASE_URL" in result.stderr and "not writable" in result.stderr
    assert result.returncode == 2


def test_migrate_logs_json_lines_when_asked(base_env: dict[str, str], tmp_path: Path) -> None:
    result = run(["migrate"], {**base_env, "LOG_FORMAT": "json"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = _json_lines(result.stderr)  # raises on any plain-text line
    assert lines[-1]["message"].startswith("Database is at revision")
    assert lines[-1]["level"] == "INFO"


def test_migrate_prints_plain_text_by_default(base_env: dict[str, str], tmp_path: Path) -> None:
    result = forked(["migrate"], base_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().startswith("Database is at revision")


@pytest.mark.parametrize(
    ("name", "value", "command"),
    [
        ("PORT", "eighty", ["serve"]),
        ("DATABASE_URL", "mysql://x", ["migrate"]),
        ("LLM_BACKEND", "embedded", ["serve"]),
    ],
)
def test_a_bad_setting_is_one_json_line_when_json_logs_are_asked(
    base_env: dict[str, str], tmp_path: Path, name: str, value: str, command: list[str]
) -> None:
    env = {**base_env, "LOG_FORMAT": "json", name: value}
    result = forked(command, env, tmp_path, prelude=HIDE_LLAMA)
    assert result.returncode == 2
    (line,) = _json_lines(result.stderr)
    assert line["level"] == "ERROR"
    assert str(line["message"]).startswith(f"invalid setting {name}")


def test_an_invalid_log_format_itself_is_reported_in_text(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    result = forked(["migrate"], {**base_env, "LOG_FORMAT": "xml"}, tmp_path)
    assert_one_red_line(result)
    assert "LOG_FORMAT" in result.stderr
    assert result.returncode == 2
