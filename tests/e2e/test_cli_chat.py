"""``llmserve chat`` as users run it: real subprocesses (piped, and under a pseudo-terminal)
against the Ollama double and the test database."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select as sql_select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import RequestLogRecord
from tests._cli_fork import run
from tests.e2e._cli import LLMSERVE, assert_one_red_line
from tests.e2e._cli import run as cold
from tests.fakes.ollama_double import OllamaDouble, Script


def default_sigint() -> None:
    """In the child: whatever the test runner did to SIGINT (a shell without job control
    ignores it in background jobs, and children inherit that), the command gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def chats(ollama: OllamaDouble) -> list[list[dict[str, Any]]]:
    """The messages of every ``/api/chat`` request the double received, in order."""
    return [r.json["messages"] for r in ollama.requests if r.path == "/api/chat"]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# -- piped: --json and plain lines ---------------------------------------------------------------


def test_json_mode_answers_each_line_and_keeps_the_conversation(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Par", "is."]), Script(tokens=["About 2 ", "million."]))
    result = cold(  # as a user starts it; the other piped runs are forked (tests/_cli_fork.py)
        ["chat", "--json", "--system", "Be brief", "--temperature", "0.2", "--max-tokens", "20"],
        subprocess_env,
        tmp_path,
        stdin="Capital of France?\nIts population?\n",
    )
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert answers == [
        {
            "message": assistant("Paris."),
            "model": answers[0]["model"],
            "done_reason": "stop",
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        },
        {
            "message": assistant("About 2 million."),
            "model": answers[0]["model"],
            "done_reason": "stop",
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        },
    ]
    assert answers[0]["model"].startswith("llama3.2")
    assert chats(ollama) == [
        [system("Be brief"), user("Capital of France?")],
        [
            system("Be brief"),
            user("Capital of France?"),
            assistant("Paris."),
            user("Its population?"),
        ],
    ]
    options = [r.json["options"] for r in ollama.requests if r.path == "/api/chat"]
    assert options == [{"temperature": 0.2, "num_predict": 20}] * 2


def test_json_mode_with_format_json_sends_it(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    result = run(["chat", "--json", "--format", "json"], subprocess_env, tmp_path, stdin="hi\n")
    assert result.returncode == 0, result.stderr
    content = json.loads(result.stdout)["message"]["content"]
    assert isinstance(json.loads(content), dict)
    assert [r.json["format"] for r in ollama.requests if r.path == "/api/chat"] == ["json"]


def test_plain_mode_system_and_reset(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["A", "1"]), Script(tokens=["B2"]), Script(tokens=["C3"]))
    lines = ["/system Be terse", "hello", "", "/reset", "again", "/system", "third"]
    result = run(["chat"], subprocess_env, tmp_path, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "A1\n\nB2\n\nC3\n"
    assert chats(ollama) == [
        [system("Be terse"), user("hello")],
        [system("Be terse"), user("again")],  # /reset keeps the system message
        [user("again"), assistant("B2"), user("third")],  # /system alone removes it
    ]
    assert "Traceback" not in result.stderr


def test_save_writes_the_conversation_and_slashes_can_be_sent(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Hi ", "there."]), Script(tokens=["A path."]))
    stdin = "hello\n//usr is what?\n/save conversation.json\n"
    result = run(["chat", "--system", "Be kind"], subprocess_env, tmp_path, stdin=stdin)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "conversation.json").read_text())
    assert saved == {
        "messages": [
            system("Be kind"),
            user("hello"),
            assistant("Hi there."),
            user("/usr is what?"),
            assistant("A path."),
        ]
    }
    assert "conversation.json" in result.stderr


@pytest.mark.parametrize(
    ("line", "code"),
    [("/nonsense", 2), ("/save", 2), ("/save no/such/dir/c.json", 1)],
    ids=["unknown", "save-without-file", "save-unwritable"],
)
def test_a_bad_command_in_a_pipe_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, line: str, code: int
) -> None:
    result = run(["chat"], subprocess_env, tmp_path, stdin=f"{line}\nhello\n")
    assert_one_red_line(result)
    assert result.returncode == code
    assert chats(ollama) == []


def test_piped_chat_with_the_backend_down_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**subprocess_env, "OLLAMA_BASE_URL": "http://127.0.0.1:9"}
    result = run(["chat", "--json"], env, tmp_path, stdin="hi\n")
    assert_one_red_line(result)
    assert result.returncode == 9
    assert result.stdout == ""


def test_piped_chat_mid_stream_failure_is_one_red_line(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c"], error_after=2, error="runner crashed"))
    result = run(["chat"], subprocess_env, tmp_path, stdin="hi\nnever sent\n")
    assert_one_red_line(result)
    assert "runner crashed" in result.stderr
    assert result.stdout.startswith("ab")
    assert len(chats(ollama)) == 1


def test_piped_chat_ctrl_c_stops_the_answer_upstream_and_exits_130(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.enqueue(Script(tokens=[f"w{i} " for i in range(300)], delay_s=0.02))
    process = subprocess.Popen(
        [*LLMSERVE, "chat"],
        env=subprocess_env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"talk\n")
    process.stdin.flush()
    assert process.stdout.read1(10)  # type: ignore[attr-defined]  # it is answering
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    assert ollama.wait_for_cancel(timeout=2.0).tokens_sent < 300
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        rows = [(r.route, r.status) for r in session.scalars(sql_select(RequestLogRecord))]
    engine.dispose()
    assert rows == [("cli", "cancelled")]


# -- interactive, under a pseudo-terminal ----------------------------------------------------


class Terminal:
    """``llmserve`` on a pseudo-terminal: what a user types and sees, Ctrl-C and Ctrl-D
    included (the terminal turns them into SIGINT and end-of-input)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        env = {**env, "TERM": "xterm-256color"}
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
            try:
                os.chdir(cwd)
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                default_sigint()
                os.execve(sys.executable, [*LLMSERVE, *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self.seen = 0  # what expect() has matched so far
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += chunk.decode(errors="replace")
        return bool(chunk)

    def expect(self, text: str, timeout: float = 30.0) -> float:
        """Wait for ``text`` after what was matched before; return when it was seen."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self.seen)) < 0:
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"{text!r} never came; the terminal shows:\n{self.output}")
        self.seen = found + len(text)
        return time.monotonic()

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                while self._read(0.05):  # what is left on the terminal
                    if not select.select([self.fd], [], [], 0)[0]:
                        break
                os.close(self.fd)
                return self.status
            self._read(0.05)
        raise AssertionError(f"chat did not exit; the terminal shows:\n{self.output}")

    def kill(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            os.close(self.fd)


@pytest.fixture
def terminal(subprocess_env: dict[str, str], tmp_path: Path) -> Any:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(["chat", *args], subprocess_env, tmp_path))
        return started[-1]

    yield start
    for term in started:
        term.kill()


def test_interactive_tokens_live_ctrl_c_stops_the_answer_and_ctrl_d_quits(
    terminal: Any, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["Slowly ", "it ", "comes."], delay_s=0.5))
    term = terminal()
    term.expect("/help")
    term.expect(">>> ")
    term.send("first\r")
    first_at = term.expect("Slowly")
    done_at = term.expect("comes.")
    assert done_at - first_at > 0.7, "the answer arrived all at once"
    term.expect(">>> ")

    ollama.enqueue(Script(tokens=[f"w{i} " for i in range(300)], delay_s=0.02))
    term.send("talk forever\r")
    term.expect("w3 ")
    term.send("\x03")  # Ctrl-C mid-answer
    term.expect("Stopped")
    term.expect(">>> ")
    assert ollama.wait_for_cancel(timeout=2.0).tokens_sent < 300

    ollama.enqueue(Script(tokens=["Still ", "here."]))
    term.send("are you there?\r")
    term.expect("Still here.")
    term.expect(">>> ")
    # The stopped turn is not part of the conversation.
    assert chats(ollama)[-1] == [
        user("first"),
        assistant("Slowly it comes."),
        user("are you there?"),
    ]
    term.send("\x04")  # Ctrl-D at the prompt
    assert term.wait() == 0
    assert "Traceback" not in term.output


def test_interactive_ctrl_c_while_the_model_is_still_loading(
    terminal: Any, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["late"], first_token_delay_s=30))
    term = terminal()
    term.expect(">>> ")
    term.send("hello\r")
    deadline = time.monotonic() + 10
    while not ollama.generations:  # the request is in; the model "loads"
        assert time.monotonic() < deadline, term.output
        time.sleep(0.05)
    time.sleep(0.3)
    sent_at = time.monotonic()
    term.send("\x03")
    term.expect("Stopped")
    assert time.monotonic() - sent_at < 3, "Ctrl-C waited for the first token"
    assert ollama.wait_for_cancel(timeout=2.0).tokens_sent == 0
    term.expect(">>> ")
    term.send("\x04")
    assert term.wait() == 0


def test_interactive_error_keeps_the_session_and_ctrl_c_at_the_prompt_quits(
    terminal: Any, ollama: OllamaDouble, tmp_path: Path
) -> None:
    ollama.enqueue(Script(status=500, error="the runner fell over"), Script(tokens=["Fine."]))
    term = terminal("--system", "Be kind")
    term.expect(">>> ")
    term.send("hello\r")
    term.expect("Error:")
    term.expect("the runner fell over")
    term.expect(">>> ")
    term.send("hello again\r")
    term.expect("Fine.")
    term.expect(">>> ")
    term.send("/help\r")
    term.expect("/save FILE")
    term.expect(">>> ")
    term.send("/save saved.json\r")
    term.expect("saved.json")
    term.expect(">>> ")
    term.send("/bogus\r")
    term.expect("unknown command")
    term.expect(">>> ")
    # A person's Ctrl-C comes long after the prompt: CPython's input() only notices a SIGINT
    # that arrives once it is waiting, not one in the microseconds between prompt and read.
    time.sleep(0.3)
    term.send("\x03")  # Ctrl-C at the prompt
    assert term.wait() == 0
    assert "Traceback" not in term.output
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved["messages"] == [system("Be kind"), user("hello again"), assistant("Fine.")]
