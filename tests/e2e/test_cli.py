"""The ``llmserve`` command as users run it: real subprocesses, real database, the double."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from tests._cli_fork import run as forked
from tests.e2e._cli import LLMSERVE, assert_one_red_line, run
from tests.fakes.ollama_double import OllamaDouble, Script

COMMANDS = [
    [],
    ["serve"],
    ["migrate"],
    ["generate"],
    ["chat"],
    ["embed"],
    ["bake-image"],
    ["models"],
    *(["models", sub] for sub in ("list", "active", "switch", "delete", "pull")),
    ["keys"],
    *(["keys", sub] for sub in ("create", "update", "list", "revoke")),
    ["logs"],
    ["logs", "prune"],
    ["stats"],
    ["backends"],
]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_every_command_is_covered_by_the_help_test() -> None:
    from llmserve.cli import _register, app

    _register()
    top = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert top == {c[0] for c in COMMANDS if c}


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_help_renders_for_every_command(command: list[str], tmp_path: Path) -> None:
    # The top level starts cold, as a user's first command does; the rest are forked from a
    # warm interpreter (tests/_cli_fork.py), real processes all the same.
    help_of = run if not command else forked
    result = help_of([*command, "--help"], {"PATH": os.environ["PATH"]}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_generate_prints_the_text(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Blue ", "light ", "scatters."]))
    result = run(["generate", "Why is the sky blue?"], subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Blue light scatters.\n"
    generate = [r for r in ollama.requests if r.path == "/api/chat"][-1].json
    assert generate["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]


def test_generate_streams_tokens_as_they_arrive(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["first ", "second ", "third"], delay_s=0.4))
    process = subprocess.Popen(
        [*LLMSERVE, "generate", "go"],
        env=subprocess_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    seen = b""
    first_at = None
    while b"first" not in seen:
        chunk = process.stdout.read1(100)  # type: ignore[attr-defined]
        assert chunk, "stdout closed before the first token"
        seen += chunk
        first_at = time.monotonic()
    rest = process.stdout.read()
    done_at = time.monotonic()
    assert process.wait(10) == 0
    assert (seen + rest).decode() == "first second third\n"
    assert first_at is not None and done_at - first_at > 0.5, "the text arrived all at once"


def test_generate_renders_with_rich_on_a_terminal(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["[bold]not markup[/bold] ", "done"]))
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*LLMSERVE, "generate", "hi"],
        env=subprocess_env,
        cwd=tmp_path,
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(10) == 0
    assert "[bold]not markup[/bold] done" in output.decode(errors="replace")


@pytest.mark.parametrize("argument", [["-"], []], ids=["dash", "nothing"])
def test_generate_reads_the_prompt_from_stdin(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, argument: list[str]
) -> None:
    result = forked(["generate", *argument], subprocess_env, tmp_path, stdin="from a pipe\n")
    assert result.returncode == 0, result.stderr
    generate = [r for r in ollama.requests if r.path == "/api/chat"][-1].json
    assert generate["messages"] == [{"role": "user", "content": "from a pipe\n"}]


def test_generate_options_no_stream_and_json(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b"], prompt_eval_count=3))
    result = forked(
        [
            "generate",
            "hi",
            "--json",
            "--system",
            "terse",
            "--temperature",
            "0.3",
            "--max-tokens",
            "9",
        ],
        subprocess_env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["response"] == "ab"
    assert payload["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    sent = [r for r in ollama.requests if r.path == "/api/chat"][-1].json
    assert sent["messages"][0] == {"role": "system", "content": "terse"}
    assert sent["options"] == {"temperature": 0.3, "num_predict": 9}
    ollama.enqueue(Script(tokens=["x", "y"]))
    plain = forked(["generate", "hi", "--no-stream"], subprocess_env, tmp_path)
    assert plain.stdout == "xy\n"


def test_generate_writes_a_request_log_row(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    assert forked(["generate", "hi"], subprocess_env, tmp_path).returncode == 0
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        rows = list(session.scalars(sql_select(RequestLogRecord)))
    engine.dispose()
    assert [(r.route, r.status) for r in rows] == [("cli", "ok")]


def test_generate_with_the_backend_down_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**subprocess_env, "OLLAMA_BASE_URL": "http://127.0.0.1:9"}
    result = forked(["generate", "hi"], env, tmp_path)
    assert_one_red_line(result)
    assert "cannot connect to Ollama" in result.stderr
    assert result.returncode == 9


def test_generate_with_a_missing_model_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.remove_model("llama3.2")
    result = forked(["generate", "hi"], subprocess_env, tmp_path)
    assert_one_red_line(result)
    assert "not installed" in result.stderr


def test_generate_mid_stream_failure_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2, error="runner crashed"))
    result = forked(["generate", "hi"], subprocess_env, tmp_path)
    assert result.stdout.startswith("ab")
    assert_one_red_line(result)
    assert "runner crashed" in result.stderr


def test_generate_with_an_empty_prompt_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    assert_one_red_line(forked(["generate", "   "], subprocess_env, tmp_path))


@pytest.mark.parametrize(
    ("name", "value", "command"),
    [
        ("PORT", "eighty", ["serve"]),
        ("LLM_BACKEND", "gpt", ["generate", "hi"]),
        ("FIRST_TOKEN_TIMEOUT_S", "-5", ["generate", "hi"]),
        ("DATABASE_URL", "mysql://x", ["migrate"]),
    ],
)
def test_a_bad_setting_is_one_red_line_naming_it(
    subprocess_env: dict[str, str], tmp_path: Path, name: str, value: str, command: list[str]
) -> None:
    result = forked(command, {**subprocess_env, name: value}, tmp_path)
    assert_one_red_line(result)
    assert name in result.stderr
    assert result.returncode == 2


def test_a_missing_built_in_model_stops_serve(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in subprocess_env.items() if k != "BUILT_IN_OLLAMA_MODEL"}
    result = forked(["serve"], env, tmp_path)
    assert_one_red_line(result)
    assert "BUILT_IN_OLLAMA_MODEL" in result.stderr


def test_ctrl_c_stops_the_generation_upstream_and_exits_130(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(tokens=[f"w{i} " for i in range(300)], delay_s=0.02))
    process = subprocess.Popen(
        [*LLMSERVE, "generate", "talk"],
        env=subprocess_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As a shell starts it, whatever the runner's own SIGINT was (a background job's is
        # ignored, and a child would inherit that).
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    assert process.stdout.read1(10)  # type: ignore[attr-defined]  # it is generating
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    record = ollama.wait_for_cancel(timeout=2.0)
    assert record.tokens_sent < 300
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        statuses = [r.status for r in session.scalars(sql_select(RequestLogRecord))]
    engine.dispose()
    assert statuses == ["cancelled"]
