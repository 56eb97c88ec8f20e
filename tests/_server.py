"""Run ``llmserve serve`` as a real process (real uvicorn) for end-to-end tests."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, process: Any, base_url: str, log_path: Path) -> None:
        """``process``: a ``subprocess.Popen``, or a ``ForkedProcess`` of ``tests/_cli_fork``."""
        self.process = process
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@contextlib.contextmanager
def running_server(
    env: dict[str, str],
    cwd: Path,
    *,
    extra_args: tuple[str, ...] = (),
    command: tuple[str, ...] = (sys.executable, "-m", "llmserve"),
    warm: bool = False,
) -> Iterator[ServerProcess]:
    """``command serve --port N`` (``llmserve`` itself unless told), healthy, stopped after.

    ``warm``: forked from an interpreter that has imported the CLI and the app already (its own
    process all the same: see ``tests/_cli_fork.py``), which saves seconds of imports; for tests
    of the server's behaviour rather than of its start."""
    port = free_port()
    log_path = cwd / f"server-{port}.log"
    server_env = {**env, "HOST_BIND_IP": "127.0.0.1"}
    process: Any
    if warm:
        from tests._cli_fork import spawn

        assert command == (sys.executable, "-m", "llmserve"), "warm servers are llmserve's own"
        process = spawn(["serve", "--port", str(port), *extra_args], server_env, cwd, log_path)
    else:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [*command, "serve", "--port", str(port), *extra_args],
                env=server_env,
                cwd=cwd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        server.stop()


def _wait_healthy(server: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"llmserve serve exited early:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + "/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"llmserve serve did not become healthy:\n{server.log()}")
