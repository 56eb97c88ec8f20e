"""Admission control on a real server: 429 with Retry-After, and slots always come back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests._server import running_server
from tests.fakes.ollama_double import OllamaDouble, Script

URL = "/api/v1/generate"


def test_full_queue_and_queue_timeout_are_429_and_slots_are_released(
    subprocess_env: dict[str, str], tmp_path: Path, ollama: OllamaDouble
) -> None:
    env = {
        **subprocess_env,
        "MAX_CONCURRENT_GENERATIONS": "1",
        "MAX_QUEUED_GENERATIONS": "1",
        "QUEUE_TIMEOUT_S": "1",
    }
    with running_server(env, tmp_path, warm=True) as server:
        ollama.enqueue(Script(tokens=["t"] * 80, delay_s=0.05))  # holds the only slot ~4 s
        holder = httpx.stream(
            "POST", server.base_url + URL, json={"prompt": "x", "stream": True}, timeout=10
        )
        response = holder.__enter__()
        assert response.status_code == 200

        queued: dict[str, httpx.Response] = {}
        waiter = threading.Thread(
            target=lambda: queued.update(
                r=httpx.post(server.base_url + URL, json={"prompt": "q"}, timeout=10)
            )
        )
        waiter.start()
        time.sleep(0.2)
        full = httpx.post(server.base_url + URL, json={"prompt": "y"}, timeout=10)
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        assert full.json()["code"] == "overloaded"
        waiter.join()
        assert queued["r"].status_code == 429  # waited QUEUE_TIMEOUT_S for the slot
        assert "QUEUE_TIMEOUT_S" in queued["r"].json()["detail"]

        holder.__exit__(None, None, None)  # the client leaves mid-stream: the slot comes back
        ollama.wait_for_cancel(timeout=2)
        ok = httpx.post(server.base_url + URL, json={"prompt": "z"}, timeout=10)
        assert ok.status_code == 200

        # Every path frees its slot: errors before and after the first token, cut streams.
        ollama.enqueue(Script(status=500, error="x"))
        ollama.enqueue(Script(tokens=["a", "b"], error_after=1))
        ollama.enqueue(Script(tokens=["a", "b"], cut_after=1))
        for stream in (False, True, True):
            httpx.post(server.base_url + URL, json={"prompt": "e", "stream": stream}, timeout=10)
        assert httpx.post(server.base_url + URL, json={"prompt": "z"}, timeout=10).is_success
