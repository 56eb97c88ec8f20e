"""API keys across processes: the CLI creates and revokes, every running server follows."""

from __future__ import annotations

import json
import re
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
    """A real ``llmserve`` process, forked from a warm interpreter (``tests/_cli_fork.py``)."""
    return forked(args, env, cwd)


def cold(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The same, started from nothing as an operator starts it."""
    return subprocess.run(
        [*LLMSERVE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_a_revoked_key_stops_working_on_every_server_within_a_second(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    env = {**subprocess_env, "AUTH_REQUIRED": "true", "LOG_LEVEL": "DEBUG"}
    created = cold(["keys", "create", "mobile-app", "--expires-in", "30d"], env, tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n", "the key must be alone on stdout"
    assert re.fullmatch(r"llms_[A-Za-z0-9_-]{43}", key)
    admin = cli(["keys", "create", "ops", "--admin"], env, tmp_path).stdout.strip()

    with (
        running_server(env, tmp_path, warm=True) as a,
        running_server(env, tmp_path, warm=True) as b,
    ):
        headers = {"Authorization": f"Bearer {key}"}
        for server in (a, b):
            response = httpx.post(
                server.base_url + "/api/v1/generate", json={"prompt": "hi"}, headers=headers
            )
            assert response.status_code == 200
        assert httpx.get(a.base_url + "/api/v1/models", headers={"X-API-Key": key}).is_success
        switch = httpx.post(a.base_url + "/api/v1/models/switch/qwen2.5:0.5b", headers=headers)
        assert switch.status_code == 403
        switch = httpx.post(
            a.base_url + "/api/v1/models/switch/qwen2.5:0.5b",
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert switch.status_code == 200

        revoked = cli(["keys", "revoke", key[:13]], env, tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        revoked_at = time.monotonic()
        pending = {a.base_url, b.base_url}
        while pending:  # every server must refuse the key within a second of the revocation
            for url in list(pending):
                if httpx.get(url + "/api/v1/models/active", headers=headers).status_code == 401:
                    pending.discard(url)
            assert time.monotonic() - revoked_at < 1.0, f"{pending} still accept a revoked key"
            time.sleep(0.01)
        logs = a.log() + b.log()

    assert logs.strip(), "the servers logged nothing: the next assertion would prove nothing"
    assert key not in logs and admin not in logs
    listed = [
        json.loads(line)
        for line in cli(["keys", "list", "--json"], env, tmp_path).stdout.splitlines()
    ]
    by_name = {row["name"]: row for row in listed}
    assert by_name["mobile-app"]["revoked_at"] and by_name["mobile-app"]["expires_at"]
    assert by_name["mobile-app"]["last_used_at"]
    assert "admin" in by_name["ops"]["scopes"] and "admin" not in by_name["mobile-app"]["scopes"]
    table = cli(["keys", "list"], env, tmp_path)
    assert "mobile-app" in table.stdout and key not in table.stdout


def test_key_commands_fail_with_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli(["keys", "create", "dup"], subprocess_env, tmp_path).returncode == 0
    for args in (
        ["keys", "create", "dup"],
        ["keys", "create", "bad name"],
        ["keys", "create", "x", "--expires-in", "soon"],
        ["keys", "revoke", "nobody"],
    ):
        result = cli(args, subprocess_env, tmp_path)
        assert result.returncode != 0, args
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # What the user typed comes back as typed: brackets in it are not terminal markup.
    for name in ("ci[nightly]", "[bold]x", "a[/]b"):
        result = cli(["keys", "revoke", name], subprocess_env, tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert name in result.stderr, result.stderr
