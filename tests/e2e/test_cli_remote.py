"""The CLI as a client of a running llmserve (``--server``/``LLMSERVE_SERVER`` with
``--api-key``/``LLMSERVE_API_KEY``): real subprocesses against one real ``llmserve serve`` per
module (auth on), the Ollama double behind it and the test database.

The remote commands run in an environment with no database and no backend settings at all, so
everything they print came over HTTP. Their output and exit codes are the local mode's: the same
texts as the local tests pin, and the exit codes the error registry gives each error type.

The commands (and the server) are forked from a warm interpreter (``tests/_cli_fork.py``: real
processes, without seconds of imports each); the first ``generate`` and the Ctrl-C test start
cold, as a user's command does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmserve import errors
from llmserve.db.session import make_engine, make_sessions
from llmserve.names import same_model
from llmserve.services.keys import KeyService
from llmserve.services.policy import KeyPolicy
from tests._cli_fork import run
from tests._server import ServerProcess, free_port, running_server
from tests.e2e._cli import LLMSERVE, assert_one_red_line
from tests.e2e._cli import run as cold
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import rows, server_env

QWEN = "qwen2.5:0.5b"


@pytest.fixture(scope="module")
def server(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = server_env(
        database_url, ollama_server.base_url, AUTH_REQUIRED="true", ACTIVE_MODEL_REFRESH_S="0.1"
    )
    with running_server(env, tmp_path_factory.mktemp("cli-remote"), warm=True) as server:
        yield server


@dataclass(frozen=True)
class Keys:
    user: str
    admin: str
    single: str  # one generation at a time


@pytest.fixture
def keys(server: ServerProcess, db_url: str, ollama: OllamaDouble) -> Keys:
    """A plain key and an admin key, on a server whose active model is the built-in one again
    (the database is emptied after each test; the server follows within its refresh interval)."""
    engine = make_engine(db_url)
    try:
        service = KeyService(make_sessions(engine))
        user, _ = service.create("cli-user", actor="test")
        admin, _ = service.create("cli-admin", admin=True, actor="test")
        single, _ = service.create("cli-single", policy=KeyPolicy(concurrency=1), actor="test")
    finally:
        engine.dispose()
    deadline = time.monotonic() + 5
    while not same_model(active_model(server, user), "llama3.2"):
        assert time.monotonic() < deadline, "the server kept the previous test's active model"
        time.sleep(0.02)
    return Keys(user, admin, single)


def active_model(server: ServerProcess, key: str) -> str:
    response = httpx.get(
        server.base_url + "/api/v1/models/active", headers={"Authorization": f"Bearer {key}"}
    )
    return str(response.json().get("model"))


def remote_env(server: ServerProcess | str, key: str | None = None) -> dict[str, str]:
    """A CLI environment with only the server and the key: no database, no backend."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    url = server if isinstance(server, str) else server.base_url
    env = {**keep, "PYTHONUNBUFFERED": "1", "LLMSERVE_SERVER": url}
    if key is not None:
        env["LLMSERVE_API_KEY"] = key
    return env


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def refused(result: subprocess.CompletedProcess[str], error: type[errors.LlmserveError]) -> str:
    """The one red line of a command that failed with ``error``'s exit code."""
    assert_one_red_line(result)
    assert result.returncode == error.exit_code, result.stderr
    return result.stderr


def chat_requests(ollama: OllamaDouble) -> list[dict[str, object]]:
    return [r.json for r in ollama.requests if r.path == "/api/chat"]


def test_generate_and_embed_over_http(
    server: ServerProcess, keys: Keys, ollama: OllamaDouble, tmp_path: Path
) -> None:
    ollama.enqueue(Script(tokens=["Blue ", "light ", "scatters."]), Script(tokens=["Par", "is."]))
    env = remote_env(server)  # the key as an option, the server from LLMSERVE_SERVER
    streamed = ok(cold(["generate", "Why is the sky blue?", "--api-key", keys.user], env, tmp_path))
    assert streamed.stdout == "Blue light scatters.\n"
    options = ["--system", "Be brief", "--temperature", "0.2", "--max-tokens", "20", "--json"]
    env = remote_env("http://127.0.0.1:9", keys.user)  # --server wins over LLMSERVE_SERVER
    whole = ok(run(["generate", "Capital?", *options, "--server", server.base_url], env, tmp_path))
    answer = json.loads(whole.stdout)
    assert same_model(answer["model"], "llama3.2")
    assert answer == {
        "response": "Paris.",
        "model": answer["model"],
        "done_reason": "stop",
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }
    sent = chat_requests(ollama)
    assert [r["messages"] for r in sent] == [
        [{"role": "user", "content": "Why is the sky blue?"}],
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Capital?"}],
    ]
    assert sent[1]["options"] == {"temperature": 0.2, "num_predict": 20}

    embedded = json.loads(ok(run(["embed", "hi"], remote_env(server, keys.user), tmp_path)).stdout)
    assert same_model(embedded["model"], "llama3.2")
    assert len(embedded["embeddings"]) == 1 and len(embedded["embeddings"][0]) > 1
    assert embedded["usage"]["prompt_tokens"] >= 1
    assert [r.json["input"] for r in ollama.requests if r.path == "/api/embed"] == [["hi"]]


def test_models_over_http(
    server: ServerProcess, keys: Keys, ollama: OllamaDouble, tmp_path: Path
) -> None:
    ollama.add_registry_model("mistral:7b", size=5_000)
    admin = remote_env(server, keys.admin)
    listed = ok(run(["models", "list", "--json"], remote_env(server, keys.user), tmp_path))
    rows_by_name = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert set(rows_by_name) == {"llama3.2:latest", QWEN}
    assert rows_by_name["llama3.2:latest"]["built_in"] and rows_by_name["llama3.2:latest"]["active"]
    assert rows_by_name[QWEN]["size"] > 0 and not rows_by_name[QWEN]["active"]

    pulled = ok(run(["models", "pull", "mistral:7b"], admin, tmp_path))
    assert "Pulled mistral:7b" in pulled.stderr
    assert "mistral:7b" in ollama.models

    switched = ok(run(["models", "switch", QWEN], admin, tmp_path))
    assert "Switched active model to qwen2.5:0.5b" in switched.stderr
    assert ok(run(["models", "active"], admin, tmp_path)).stdout == f"{QWEN}\n"
    table = ok(run(["models", "list"], admin, tmp_path)).stdout
    assert "mistral:7b" in table and "llama3.2:latest" in table

    unknown = run(["models", "pull", "nosuchmodel"], admin, tmp_path)
    assert unknown.returncode == errors.ModelNotFoundError.exit_code  # after "pulling manifest"
    assert unknown.stderr.rstrip().splitlines()[-1].startswith("Error: model 'nosuchmodel'")
    not_admin = run(["models", "pull", "mistral:7b"], remote_env(server, keys.user), tmp_path)
    assert "admin" in refused(not_admin, errors.PermissionDeniedError)  # before any bar


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_delete_checks_the_rules_before_asking_for_confirmation(
    server: ServerProcess,
    keys: Keys,
    ollama: OllamaDouble,
    subprocess_env: dict[str, str],
    tmp_path: Path,
    mode: str,
) -> None:
    """Run from a script (stdin not a terminal) and without --yes, a refused delete fails with
    its rule's message, not with "pass --yes"; only an allowed one asks for confirmation."""
    ollama.add_model("mistral:7b")
    admin = {"Authorization": f"Bearer {keys.admin}"}
    switch = httpx.post(f"{server.base_url}/api/v1/models/switch/{QWEN}", headers=admin)
    assert switch.status_code == 200
    env = subprocess_env if mode == "local" else remote_env(server, keys.admin)

    def delete(name: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return run(["models", "delete", name, *flags], env, tmp_path, stdin="")

    assert "cannot be deleted" in refused(delete("llama3.2"), errors.ModelProtectedError)
    assert "switch to another model" in refused(delete(QWEN), errors.ModelInUseError)
    assert "not found locally" in refused(delete("gemma3:1b"), errors.ModelNotFoundError)
    unconfirmed = delete("mistral:7b")
    assert_one_red_line(unconfirmed)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert "mistral:7b" in ollama.models
    assert "Deleted model mistral:7b" in ok(delete("mistral:7b", "--yes")).stderr
    assert "mistral:7b" not in ollama.models
    assert {"llama3.2:latest", QWEN} <= set(ollama.models)


def test_refusals_are_one_red_line_with_the_local_exit_codes(
    server: ServerProcess, keys: Keys, ollama: OllamaDouble, tmp_path: Path
) -> None:
    no_key = refused(
        run(["models", "list"], remote_env(server), tmp_path), errors.AuthenticationError
    )
    assert "--api-key" in no_key and "LLMSERVE_API_KEY" in no_key
    wrong = run(["models", "list"], remote_env(server, "llms_not-a-real-key"), tmp_path)
    assert "invalid API key" in refused(wrong, errors.AuthenticationError)

    ollama.enqueue(Script(tokens=[f"w{i} " for i in range(3000)], delay_s=0.05))  # closed below
    with httpx.stream(
        "POST",
        server.base_url + "/api/v1/generate",
        json={"prompt": "the key's one generation", "stream": True},
        headers={"Authorization": f"Bearer {keys.single}"},
        timeout=30,
    ) as held:
        assert held.status_code == 200
        lines = held.iter_lines()  # kept: a dropped iterator would close the response
        assert next(lines).startswith("data: ")  # it runs: the key may not start another one
        busy = run(["generate", "two"], remote_env(server, keys.single), tmp_path)
    line = refused(busy, errors.RateLimitedError)
    assert "generations of this key are running already" in line
    assert re.search(r"try again in \d+ s", line), line

    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2, error="runner crashed"))
    cut = run(["chat"], remote_env(server, keys.user), tmp_path, stdin="hi\n")
    assert cut.stdout.startswith("ab")
    assert "runner crashed" in refused(cut, errors.BackendStreamError)

    down = run(["generate", "hi"], remote_env(f"http://127.0.0.1:{free_port()}", "k"), tmp_path)
    assert "cannot reach llmserve" in refused(down, errors.BackendUnavailableError)
    assert errors.BackendUnavailableError.exit_code == 9  # what a backend that is down gives
    bad_url = run(["models", "active", "--server", "localhost:8000"], remote_env(server), tmp_path)
    assert_one_red_line(bad_url)
    assert bad_url.returncode == 2 and "--server" in bad_url.stderr


def test_chat_json_over_http_keeps_the_conversation(
    server: ServerProcess, keys: Keys, ollama: OllamaDouble, tmp_path: Path
) -> None:
    ollama.enqueue(Script(tokens=["Par", "is."]), Script(tokens=["About 2 ", "million."]))
    result = ok(
        run(
            ["chat", "--json", "--system", "Be brief", "--max-tokens", "20"],
            remote_env(server, keys.user),
            tmp_path,
            stdin="Capital of France?\n/save chat.json\nIts population?\n",
        )
    )
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["message"] for a in answers] == [
        {"role": "assistant", "content": "Paris."},
        {"role": "assistant", "content": "About 2 million."},
    ]
    assert (
        same_model(answers[0]["model"], "llama3.2") and answers[1]["model"] == answers[0]["model"]
    )
    assert answers[0]["usage"] == {"prompt_tokens": 7, "completion_tokens": 2}
    assert [r["messages"] for r in chat_requests(ollama)][1] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Its population?"},
    ]
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]


def test_ctrl_c_closes_the_connection_and_the_server_stops_upstream(
    server: ServerProcess, keys: Keys, ollama: OllamaDouble, db_url: str, tmp_path: Path
) -> None:
    ollama.enqueue(Script(tokens=[f"w{i} " for i in range(300)], delay_s=0.02))
    process = subprocess.Popen(
        [*LLMSERVE, "generate", "talk"],
        env=remote_env(server, keys.user),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    assert process.stdout.read1(10)  # type: ignore[attr-defined]  # it is generating
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    assert ollama.wait_for_cancel(timeout=3.0).tokens_sent < 300
    # Only the generate rows: the previous test's chat rows may land after its database was
    # emptied (the module's server writes its request log in the background).
    deadline = time.monotonic() + 5
    while not (logged := [r for r in rows(db_url) if r.route == "/api/v1/generate"]):
        assert time.monotonic() < deadline, "the cancelled generation was not logged"
        time.sleep(0.05)
    assert [(r.route, r.status) for r in logged] == [("/api/v1/generate", "cancelled")]
