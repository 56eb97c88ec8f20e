"""``python -m llmserve ARGS`` as real processes, without paying Python's start each time.

Starting the CLI costs seconds of imports (Typer, Rich, SQLAlchemy, Alembic, psycopg...) and as
much again of interpreter teardown; the CLI tests run it hundreds of times, the end-to-end tests
start dozens of servers. Here one helper process imports the CLI's modules (and what ``serve``
imports) once and forks a child per command: each child is a process of its own (its own pid,
exit code, stdin, stdout and stderr, working directory and environment), runs
``llmserve.__main__`` as ``python -m llmserve`` does, and exits through the interpreter's normal
shutdown (non-daemon threads joined, ``atexit`` run, streams flushed), so what a test reads is
what a freshly started process would have given. ``run`` waits for the command's end, as
``subprocess.run``; ``spawn`` leaves it running (a server), as ``subprocess.Popen``.

What differs from a cold start, and why it does not matter to the tests that use it:

- The CLI's modules were imported before the command's environment was set. Nothing in
  ``llmserve`` reads its settings at import time; what Python and Rich do read at start
  (``PYTHON*``, locale, terminal and colour variables) keys the helper: commands whose values
  differ get a helper of their own. Whatever importing the CLI printed (a warning, say) each
  child prints again first, as a cold start would.
- stdout and stderr are files rather than pipes (neither is a terminal, either way), and stdin is
  the given text or, when none is given, ``/dev/null`` rather than the runner's own.
- SIGINT has Python's usual handler whatever the runner's was, as in a shell.

Commands that need a terminal stay plain subprocesses, and cold starts stay tested: each CLI
test file keeps at least one, and ``tests/faults/test_shutdown.py`` starts its servers cold.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

LLMSERVE = [sys.executable, "-m", "llmserve"]

#: What a Python process (and Rich, on import) reads from the environment when it starts.
_STARTUP_PREFIXES = ("PYTHON", "LC_")
_STARTUP_NAMES = frozenset(
    {
        "LANG", "LANGUAGE", "TERM", "COLORTERM", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR",
        "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "JUPYTER_LINES", "TERM_PROGRAM",
    }
)  # fmt: skip

_HELPER = r"""
import gc, importlib, json, os, pkgutil, runpy, signal, sys, time

signal.signal(signal.SIGINT, signal.default_int_handler)
control_in = os.fdopen(os.dup(0), "r")
control_out = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 0)
os.dup2(2, 1)
exec(sys.argv[1])  # the prelude, before anything of llmserve is imported

# What the imports print (a warning, say) a cold start prints too: each child prints it again.
sys.stdout.flush()
sys.stderr.flush()
saved = os.dup(1), os.dup(2)
import tempfile
warm_out, warm_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
os.dup2(warm_out.fileno(), 1)
os.dup2(warm_err.fileno(), 2)


def warm(names):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass  # the command that needs it imports it again, and fails as it would anyway


import llmserve.cli
# Every command's module: what `main()` imports before it parses the arguments.
warm("llmserve.cli." + found.name for found in pkgutil.iter_modules(llmserve.cli.__path__))
sys.stdout.flush()
sys.stderr.flush()
os.dup2(saved[0], 1)
os.dup2(saved[1], 2)
os.close(saved[0])
os.close(saved[1])
warm(sys.argv[2:])  # what some commands import later (what they print then is not replayed)
warm_out.seek(0)
warm_err.seek(0)
printed = warm_out.read(), warm_err.read()
warm_out.close()
warm_err.close()
gc.collect()
gc.freeze()  # the children's teardown then leaves the imported objects alone
control_out.write("ready\n")
control_out.flush()


def child(call):
    control_in.close()
    control_out.close()
    stdout_flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if call["append"] else os.O_TRUNC)
    for fd, path, flags in (
        (0, call["stdin"], os.O_RDONLY),
        (1, call["stdout"], stdout_flags),
        (2, call["stderr"], stdout_flags),
    ):
        if path is None:  # stderr to stdout
            os.dup2(1, fd)
            continue
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.close(devnull)
    for fd, text in zip((1, 2), printed):
        if text:
            os.write(fd, text)
    os.chdir(call["cwd"])
    os.environ.clear()
    os.environ.update(call["env"])
    sys.path[0] = os.getcwd()  # as `python -m` sets it
    sys.argv = ["llmserve", *call["args"]]
    runpy.run_module("llmserve", run_name="__main__", alter_sys=True)
    sys.exit(0)  # through the interpreter's own shutdown, as at the end of a real run


def reap(pid, block):
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


spawned = set()
helper = os.getpid()
try:
    for line in control_in:
        call = json.loads(line)
        if call["op"] == "poll":
            code = reap(call["pid"], block=False)
            if code is not None:
                spawned.discard(call["pid"])
            reply = {"returncode": code}
        else:
            pid = os.fork()
            if pid == 0:
                child(call)
            if call["op"] == "spawn":
                spawned.add(pid)
                reply = {"pid": pid}
            else:
                deadline = time.monotonic() + call["timeout"]
                while (code := reap(pid, block=False)) is None:
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        reap(pid, block=True)
                        break
                    time.sleep(0.005)
                reply = {"timeout": True} if code is None else {"returncode": code}
        control_out.write(json.dumps(reply) + "\n")
        control_out.flush()
finally:  # the tests are gone: so is what they left running (a child ends here too: not it)
    for pid in spawned if os.getpid() == helper else ():
        try:
            os.kill(pid, signal.SIGKILL)
            reap(pid, block=True)
        except OSError:
            pass
"""

#: Imported by the helper besides the CLI's own modules: what ``serve`` imports when it starts.
_WARM = ("uvicorn", "llmserve.api.app")


class _Helper:
    def __init__(self, startup_env: dict[str, str], prelude: str) -> None:
        self._lock = threading.Lock()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  # as long as the helper lives
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER, prelude, *_WARM],
            env=startup_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline() != "ready\n":
            self.process.wait(10)
            raise RuntimeError(f"the CLI helper did not start:\n{self._errors()}")

    def _errors(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def call(self, request: dict[str, object]) -> dict[str, object]:
        assert self.process.stdin is not None and self.process.stdout is not None
        with self._lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the CLI helper died:\n{self._errors()}")
        return json.loads(reply)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


class ForkedProcess:
    """The parts of ``subprocess.Popen`` the tests use, for a process the helper forked."""

    def __init__(self, helper: _Helper, pid: int, args: list[str]) -> None:
        self._helper = helper
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._helper.call({"op": "poll", "pid": self.pid})["returncode"]
            self.returncode = None if code is None else int(code)  # type: ignore[call-overload]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.01)
        return code

    def send_signal(self, signum: int) -> None:
        # Until polled, an exited child stays a zombie: its pid is not reused meanwhile.
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_helpers: dict[tuple[tuple[tuple[str, str], ...], str], _Helper] = {}
_helpers_lock = threading.Lock()


def _startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in env.items()
        if name in _STARTUP_NAMES or name.startswith(_STARTUP_PREFIXES) or name == "PATH"
    }


def _helper_for(env: Mapping[str, str], prelude: str) -> _Helper:
    startup = _startup_env(env)
    key = (tuple(sorted((k, v) for k, v in startup.items() if k != "PATH")), prelude)
    with _helpers_lock:
        helper = _helpers.get(key)
        if helper is None or helper.process.poll() is not None:
            helper = _helpers[key] = _Helper(startup, prelude)
        return helper


@atexit.register
def _close_helpers() -> None:
    for helper in _helpers.values():
        helper.close()
    _helpers.clear()


def _text(output: bytes) -> str:
    """As ``subprocess.run(..., text=True)`` decodes: the locale's encoding, universal newlines."""
    decoded = output.decode(locale.getpreferredencoding(False))
    return decoded.replace("\r\n", "\n").replace("\r", "\n")


def run(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    stdin: str | None = None,
    *,
    timeout: float = 60,
    prelude: str = "",
) -> subprocess.CompletedProcess[str]:
    """``python -m llmserve *args`` with ``env`` in ``cwd``, fed ``stdin`` (else ``/dev/null``),
    as a forked process of an already warm interpreter; ``prelude`` is Python run in that
    interpreter before ``llmserve`` is imported (say, to hide a module)."""
    with tempfile.TemporaryDirectory(prefix="llmserve-cli-") as scratch:
        files = {name: Path(scratch) / name for name in ("stdin", "stdout", "stderr")}
        files["stdin"].write_text(stdin or "", encoding="utf-8")
        for name in ("stdout", "stderr"):
            files[name].touch()
        reply = _helper_for(env, prelude).call(
            {
                "args": list(args),
                "env": dict(env),
                "cwd": str(cwd),
                "stdin": str(files["stdin"]) if stdin is not None else os.devnull,
                "stdout": str(files["stdout"]),
                "stderr": str(files["stderr"]),
                "timeout": timeout,
                "append": False,
                "op": "run",
            }
        )
        command = [*LLMSERVE, *args]
        stdout, stderr = (_text(files[name].read_bytes()) for name in ("stdout", "stderr"))
    if reply.get("timeout"):
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
    return subprocess.CompletedProcess(command, int(reply["returncode"]), stdout, stderr)  # type: ignore[call-overload]


def spawn(args: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> ForkedProcess:
    """``python -m llmserve *args`` left running, stdout and stderr appended to ``log_path``
    (as ``Popen(..., stdout=log, stderr=STDOUT)``), stdin ``/dev/null``."""
    helper = _helper_for(env, "")
    log_path.touch()
    reply = helper.call(
        {
            "op": "spawn",
            "args": list(args),
            "env": dict(env),
            "cwd": str(cwd),
            "stdin": os.devnull,
            "stdout": str(log_path),
            "stderr": None,
            "append": True,
        }
    )
    return ForkedProcess(helper, int(reply["pid"]), [*LLMSERVE, *args])  # type: ignore[call-overload]
