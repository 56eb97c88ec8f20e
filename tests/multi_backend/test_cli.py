"""``llmserve backends`` (its own view, and a running server's with ``--server``) and
``llmserve models pull|delete --backend URL``, as real subprocesses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests._server import ServerProcess
from tests.e2e._cli import assert_one_red_line, run
from tests.fakes.ollama_double import OllamaDouble
from tests.faults._tools import server_env
from tests.multi_backend.conftest import BUILT_IN


def _env(db_url: str, trio: list[OllamaDouble]) -> dict[str, str]:
    return server_env(db_url, ",".join(d.base_url for d in trio))


def test_backends_asks_every_server_itself(
    trio: list[OllamaDouble], db_url: str, tmp_path: Path
) -> None:
    first, second, third = trio
    second.add_model("qwen2.5:0.5b")
    third.set_down(True)
    result = run(["backends", "--json"], _env(db_url, trio), tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["url"] for row in rows] == [d.base_url for d in trio]
    assert [row["status"] for row in rows[:2]] == ["ok", "ok"]
    assert rows[2]["status"].startswith("unavailable")
    assert rows[0]["models"] == ["llama3.2:latest"] and rows[0]["version"] == first.version
    assert rows[1]["models"] == ["llama3.2:latest", "qwen2.5:0.5b"]
    table = run(["backends"], _env(db_url, trio), tmp_path)
    assert table.returncode == 0 and second.base_url in table.stdout


def test_backends_of_a_running_server(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    result = run(["backends", "--json", "--server", server.base_url], {"PATH": ""}, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["url"] for row in rows] == [d.base_url for d in trio]
    assert all(row["status"] == "ok" and row["in_flight"] == 0 for row in rows)
    assert all({"errors", "failovers", "generations"} <= set(row) for row in rows)


def test_pull_and_delete_on_one_backend(
    trio: list[OllamaDouble], db_url: str, tmp_path: Path
) -> None:
    first, second, _ = trio
    for double in trio:
        double.add_registry_model("new:1b")
    env = _env(db_url, trio)
    result = run(["models", "pull", "new:1b", "--backend", first.base_url], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ["new:1b" in d.models for d in trio] == [True, False, False]
    result = run(["models", "pull", "new:1b"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert all("new:1b" in d.models for d in trio)
    delete = ["models", "delete", "new:1b", "--yes", "--backend", second.base_url]
    result = run(delete, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ["new:1b" in d.models for d in trio] == [True, False, True]
    unknown = ["models", "delete", "new:1b", "--yes", "--backend", "http://127.0.0.1:9"]
    result = run(unknown, env, tmp_path)
    assert_one_red_line(result)
    assert "no backend server 'http://127.0.0.1:9' is configured" in result.stderr
    assert all(BUILT_IN + ":latest" in d.models for d in trio)
