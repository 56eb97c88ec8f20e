"""SIGTERM on a real ``llmserve serve``: stop accepting, let running streams finish
up to ``SHUTDOWN_GRACE_S``, cancel the rest upstream, flush the request log, exit 0.

What is still running when the grace period ends is cut: a stream ends with ``event: error``
(code ``shutting_down``), a whole-response request gets a 503; both are cancelled upstream and
logged as ``cancelled``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests._server import running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import GENERATE, parse_sse, rows

GRACE_S = 1.5


class Client(threading.Thread):
    """One generation read in the background; ``request_id`` doubles as the prompt."""

    def __init__(self, base_url: str, request_id: str, *, stream: bool = True) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.request_id = request_id
        self.stream = stream
        self.first_byte = threading.Event()
        self.body = ""
        self.status = 0
        self.request_id_echo: str | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.base_url + GENERATE,
                json={"prompt": self.request_id, "stream": self.stream},
                headers={"X-Request-ID": self.request_id},
                timeout=15,
            ) as response:
                self.status = response.status_code
                self.request_id_echo = response.headers.get("x-request-id")
                for text in response.iter_text():
                    self.body += text
                    self.first_byte.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.first_byte.set()


def test_sigterm_drains_short_streams_cuts_long_ones_and_flushes_the_log(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble, db_url: str
) -> None:
    env = {**subprocess_env, "SHUTDOWN_GRACE_S": str(GRACE_S)}
    short_script = Script(tokens=[f"s{i} " for i in range(6)], delay_s=0.15)  # ~0.9 s: drained
    long_script = Script(tokens=[f"l{i} " for i in range(100)], delay_s=0.1)  # ~10 s: cut
    with running_server(env, tmp_path) as server:
        # One script per client, in order: each client waits for the previous one's first byte
        # (the whole-response one sends nothing before the end, so it goes last).
        clients = [
            Client(server.base_url, "short"),
            Client(server.base_url, "long"),
            Client(server.base_url, "long-whole", stream=False),
        ]
        ollama.enqueue(short_script, long_script, long_script)
        for client in clients[:2]:
            client.start()
            assert client.first_byte.wait(5)
        clients[2].start()
        deadline = time.monotonic() + 5
        while len(ollama.generations) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)

        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.base_url + "/health", timeout=2)
        assert server.process.poll() is None  # still draining

        cancelled = {ollama.wait_for_cancel(timeout=GRACE_S + 3).prompt for _ in range(2)}
        assert cancelled == {"long", "long-whole"}
        try:
            code = server.process.wait(GRACE_S + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit after SIGTERM:\n{server.log()}")
        stopped_after = time.monotonic() - signalled
        for client in clients:
            client.join(5)

    assert code == 0, server.log()
    assert GRACE_S - 0.2 < stopped_after < GRACE_S + 5

    short, long, long_whole = clients
    assert short.error is None and short.body.endswith("data: {}\n\n")
    assert [e.data["response"] for e in parse_sse(short.body)[:-1]] == [f"s{i} " for i in range(6)]
    # Cut at the end of the grace period: the stream says why, and never ends with data: {}.
    assert long.error is None and "data: {}" not in long.body
    *tokens, last = parse_sse(long.body)
    assert tokens and last.name == "error" and last.data["code"] == "shutting_down"
    # A whole-response request cut the same way is a 503, not uvicorn's 500.
    assert long_whole.error is None and long_whole.status == 503
    assert long_whole.request_id_echo == "long-whole"
    assert json.loads(long_whole.body)["code"] == "shutting_down"
    assert "Traceback" not in server.log()

    by_id = {row.request_id: row for row in rows(db_url, 3, timeout=0.5)}
    assert set(by_id) == {"short", "long", "long-whole"}, server.log()
    assert by_id["short"].status == "ok" and by_id["short"].completion_tokens == 6
    for name in ("long", "long-whole"):
        assert by_id[name].status == "cancelled"
        assert 0 < by_id[name].completion_tokens < 100


def test_an_openai_stream_cut_at_shutdown_ends_with_openai_s_error_event(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    env = {**subprocess_env, "SHUTDOWN_GRACE_S": "0.5"}
    body: list[str] = []
    started = threading.Event()

    def read(base_url: str) -> None:
        request = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "long"}],
            "stream": True,
        }
        with httpx.stream(
            "POST", base_url + "/v1/chat/completions", json=request, timeout=15
        ) as response:
            for text in response.iter_text():
                body.append(text)
                started.set()

    with running_server(env, tmp_path) as server:
        ollama.enqueue(Script(tokens=[f"t{i} " for i in range(100)], delay_s=0.1))
        reader = threading.Thread(target=read, args=(server.base_url,), daemon=True)
        reader.start()
        assert started.wait(5)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        reader.join(5)
    events = [
        line[len("data: ") :] for line in "".join(body).split("\n") if line.startswith("data: ")
    ]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
