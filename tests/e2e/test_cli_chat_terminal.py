"""``llmserve chat --server … --api-key …`` in a real terminal: tmux runs it in a detached
session (a private socket per test), the test types into it and reads the screen back, against a
real ``llmserve serve`` with auth on and the Ollama double behind it.

Every wait polls the screen in short steps until what the user would see is there.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmserve.db.session import make_engine, make_sessions
from llmserve.services.keys import KeyService
from tests._server import ServerProcess, running_server
from tests.e2e._cli import LLMSERVE
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import server_env

TMUX = "/usr/bin/tmux"
PROMPT = ">>>"


@pytest.fixture(scope="module")
def server(
    database_url: str, ollama_server: OllamaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = server_env(database_url, ollama_server.base_url, AUTH_REQUIRED="true")
    with running_server(env, tmp_path_factory.mktemp("chat-terminal")) as server:
        yield server


@pytest.fixture
def api_key(db_url: str) -> str:
    engine = make_engine(db_url)
    try:
        key, _ = KeyService(make_sessions(engine)).create("terminal", actor="test")
    finally:
        engine.dispose()
    return key


class Terminal:
    """One tmux session on a socket of its own, running one command."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.socket = f"llmserve-test-{uuid.uuid4().hex[:12]}"
        self.tmux(
            "new-session", "-d", "-s", "chat", "-x", "100", "-y", "40", "-c", str(cwd),
            shlex.join(command),
        )  # fmt: skip
        # Keep the pane after the command exits, to read its exit status.
        self.tmux("set-option", "-t", "chat", "remain-on-exit", "on")
        self.pid = int(self.tmux("display-message", "-p", "-t", "chat", "#{pane_pid}"))

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [TMUX, "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "chat")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "chat", "-l", text)
        self.tmux("send-keys", "-t", "chat", "Enter")

    def key(self, name: str) -> None:
        self.tmux("send-keys", "-t", "chat", name)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The screen, once ``text`` is on it and the prompt is back (or the command ended)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen and (
                screen.rstrip().endswith(PROMPT) or self.exit_status() is not None
            ):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not show up; the screen:\n{screen}")
            time.sleep(0.05)

    def quit(self, timeout: float = 60.0) -> int:
        """Ctrl-D at the prompt; the command's exit status once it has ended."""
        self.key("C-d")
        deadline = time.monotonic() + timeout
        while (status := self.exit_status()) is None:
            assert time.monotonic() < deadline, f"still running:\n{self.screen()}"
            time.sleep(0.05)
        return status

    def exit_status(self) -> int | None:
        """The exit status of the command once it has ended, else None. Read from the kernel
        while the process waits to be reaped (tmux may take its time noticing), else from tmux."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:  # reaped: tmux has the status
            status = self.tmux("display-message", "-p", "-t", "chat", "#{pane_dead_status}")
            return int(status) if status.strip() else None
        fields = stat.rsplit(")", 1)[1].split()  # after the command name: state, ..., exit_code
        return int(fields[-1]) >> 8 if fields[0] == "Z" else None

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal(
    server: ServerProcess, api_key: str, tmp_path: Path, ollama: OllamaDouble
) -> Iterator[Terminal]:
    env = ["env", "-i", "TERM=screen-256color", "LANG=C.UTF-8", "HOME=" + str(tmp_path)]
    command = [*env, *LLMSERVE, "chat", "--server", server.base_url, "--api-key", api_key]
    term = Terminal(command, tmp_path)
    try:
        yield term
    finally:
        term.close()


def chat_messages(ollama: OllamaDouble) -> list[list[dict[str, str]]]:
    return [r.json["messages"] for r in ollama.requests if r.path == "/api/chat"]


def test_a_chat_session_in_a_real_terminal(
    terminal: Terminal, ollama: OllamaDouble, tmp_path: Path
) -> None:
    ollama.enqueue(
        Script(tokens=["Bonjour ", "le ", "monde."]),
        Script(tokens=[f"w{i} " for i in range(300)], delay_s=0.05),
        Script(tokens=["Fresh ", "start."]),
    )
    terminal.wait_for("Chatting with")

    terminal.type("Say hello")
    screen = terminal.wait_for("Bonjour le monde.")
    assert "Say hello" in screen

    terminal.type("/save chat.json")
    terminal.wait_for("Saved 2 messages")
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved == {
        "messages": [
            {"role": "user", "content": "Say hello"},
            {"role": "assistant", "content": "Bonjour le monde."},
        ]
    }

    terminal.type("Talk for a long time")
    deadline = time.monotonic() + 60
    while "w3 " not in terminal.screen():  # it is answering
        assert time.monotonic() < deadline, terminal.screen()
        time.sleep(0.05)
    terminal.key("C-c")
    screen = terminal.wait_for("Stopped; this turn is not kept.")
    assert "Traceback" not in screen
    assert ollama.wait_for_cancel(timeout=5.0).tokens_sent < 300  # the server stopped upstream

    terminal.type("/reset")
    terminal.wait_for("Conversation forgotten.")
    terminal.type("Again")
    screen = terminal.wait_for("Fresh start.")
    assert chat_messages(ollama)[-1] == [{"role": "user", "content": "Again"}]
    print(screen)  # what the user saw (pytest -s shows it)

    assert terminal.quit() == 0
    assert "Traceback" not in terminal.screen()
