"""Model management across processes: the CLI and two real servers agree within a second."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests._cli_fork import run as forked
from tests._server import running_server
from tests.fakes.ollama_double import OllamaDouble

LLMSERVE = [sys.executable, "-m", "llmserve"]


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLMSERVE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def wait_active(base_url: str, expected: str, timeout: float = 3.0) -> float:
    """Seconds until the server reports ``expected`` as active."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if httpx.get(base_url + "/api/v1/models/active").json()["model"] == expected:
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"{base_url} did not switch to {expected} within {timeout} s")


def test_a_switch_through_one_server_reaches_the_other_within_a_second(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    with (
        running_server(subprocess_env, tmp_path, warm=True) as a,
        running_server(subprocess_env, tmp_path, warm=True) as b,
    ):
        delays = []
        for target in ["qwen2.5:0.5b", "llama3.2:latest"] * 3:
            assert httpx.post(f"{a.base_url}/api/v1/models/switch/{target}").status_code == 200
            delays.append(wait_active(b.base_url, target))
        assert max(delays) < 1.0, delays
        assert statistics.median(delays) < 1.0
        response = httpx.post(b.base_url + "/api/v1/generate", json={"prompt": "hi"})
        assert response.json()["model"] == "llama3.2:latest"


def test_cli_switch_reaches_a_running_server(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        result = forked(["models", "switch", "qwen2.5:0.5b"], subprocess_env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Switched active model to qwen2.5:0.5b" in result.stderr
        assert wait_active(server.base_url, "qwen2.5:0.5b") < 1.0
        generated = httpx.post(server.base_url + "/api/v1/generate", json={"prompt": "x"})
        assert generated.json()["model"] == "qwen2.5:0.5b"
        active = forked(["models", "active"], subprocess_env, tmp_path)
        assert active.stdout == "qwen2.5:0.5b\n"


def test_cli_models_list_table_and_json(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    table = forked(["models", "list"], subprocess_env, tmp_path)
    assert table.returncode == 0, table.stderr
    assert "llama3.2:latest" in table.stdout and "qwen2.5:0.5b" in table.stdout
    rows = [
        json.loads(line)
        for line in forked(
            ["models", "list", "--json"], subprocess_env, tmp_path
        ).stdout.splitlines()
    ]
    by_name = {row["name"]: row for row in rows}
    assert by_name["llama3.2:latest"]["built_in"] and by_name["llama3.2:latest"]["active"]
    assert not by_name["qwen2.5:0.5b"]["active"]


def test_cli_rules_match_the_api(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    # The first starts cold, as a user's command does; the rest are forked (tests/_cli_fork.py).
    protected = cli(["models", "delete", "llama3.2", "--yes"], subprocess_env, tmp_path)
    assert protected.returncode != 0 and "cannot be deleted" in protected.stderr
    assert len(protected.stderr.strip().splitlines()) == 1
    missing = forked(["models", "switch", "mistral"], subprocess_env, tmp_path)
    assert missing.returncode != 0 and "not found locally" in missing.stderr
    invalid = forked(["models", "switch", "../x"], subprocess_env, tmp_path)
    assert invalid.returncode == 2 and "invalid model name" in invalid.stderr
    unconfirmed = forked(["models", "delete", "qwen2.5:0.5b"], subprocess_env, tmp_path)
    assert unconfirmed.returncode != 0 and "--yes" in unconfirmed.stderr
    assert "qwen2.5:0.5b" in ollama.models
    deleted = forked(["models", "delete", "qwen2.5:0.5b", "--yes"], subprocess_env, tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert "qwen2.5:0.5b" not in ollama.models
    for result in (protected, missing, invalid, unconfirmed):
        assert "Traceback" not in result.stderr


def test_cli_pull_shows_progress_and_installs(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.add_registry_model("mistral:7b", size=5_000)
    result = forked(["models", "pull", "mistral:7b"], subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Pulled mistral:7b" in result.stderr
    assert "mistral:7b" in ollama.models
    unknown = forked(["models", "pull", "nosuchmodel"], subprocess_env, tmp_path)
    assert unknown.returncode == 3
    assert "Traceback" not in unknown.stderr


def test_a_client_leaving_mid_pull_leaves_no_half_recorded_state(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    from sqlalchemy import select

    from llmserve.db.session import make_engine, make_sessions
    from llmserve.db.tables import AuditRecord

    ollama.add_registry_model("mistral:7b", size=50_000)
    ollama.pull_delay_s = 0.05
    with running_server(subprocess_env, tmp_path, warm=True) as server:
        with httpx.stream(
            "POST",
            server.base_url + "/api/v1/models/pull?stream=true",
            json={"name": "mistral:7b"},
            timeout=10,
        ) as response:
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 2:
                    break
        record = ollama.wait_for_pull_cancel(timeout=2.0)
        assert record.cancelled and "success" not in record.statuses
        assert "mistral:7b" not in ollama.models
        listed = httpx.get(server.base_url + "/api/v1/models").json()["models"]
        assert "mistral:7b" not in {m["name"] for m in listed}
        deadline = time.monotonic() + 2
        engine = make_engine(db_url)
        while time.monotonic() < deadline:
            with make_sessions(engine)() as session:
                rows = [(r.action, r.outcome) for r in session.scalars(select(AuditRecord))]
            if rows:
                break
            time.sleep(0.02)
        engine.dispose()
        assert rows == [("pull", "cancelled")]
