"""Routing over three Ollama doubles: by model, least busy first, 503 busy skipped, and the
per-server state in ``/ready``, ``/metrics`` and ``/api/v1/backends``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble, Script
from tests.faults._tools import server_env
from tests.multi_backend.conftest import backend_states, run_streams

BUSY = "server busy, please try again.  maximum pending requests exceeded"


def _served(double: OllamaDouble) -> int:
    """Generations the double answered (a scripted failure is not an answer)."""
    return sum(1 for record in double.generations if record.status == 200)


def test_48_concurrent_streams_spread_evenly(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess]
) -> None:
    for double in trio:
        double.default_script = Script(tokens=[f"t{i} " for i in range(10)], delay_s=0.05)
    server = start_server(MAX_CONCURRENT_GENERATIONS=16)
    outcomes = run_streams(server.base_url, 48)
    failed = [(o.status, o.error) for o in outcomes if o.status != 200 or not o.done]
    assert not failed, (failed, server.log()[-3000:])
    assert all(len(o.tokens) == 10 for o in outcomes)
    shares = [_served(double) for double in trio]
    print(f"\nspread of 48 concurrent streams over 3 servers: {shares}")
    assert sum(shares) == 48
    assert all(16 * 0.8 <= share <= 16 * 1.2 for share in shares), shares
    states = backend_states(server.base_url)
    assert list(states) == [double.base_url for double in trio]
    assert all(state["status"] == "ok" and state["in_flight"] == 0 for state in states.values())


def test_requests_go_only_to_servers_that_have_the_model(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess]
) -> None:
    first, second, third = trio
    second.add_model("qwen2.5:0.5b")
    third.add_model("qwen2.5:0.5b")
    server = start_server()
    body = {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(6):
        response = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
    # Never the server without the model; one at a time, the one that has it loaded already.
    assert _served(first) == 0 and {_served(second), _served(third)} == {0, 6}
    # A model pulled on one server behind llmserve's back is found on the miss.
    first.add_model("fresh:1b")
    body["model"] = "fresh:1b"
    response = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert first.generations[-1].model == "fresh:1b"
    missing = {**body, "model": "nowhere:1b"}
    response = httpx.post(server.base_url + "/v1/chat/completions", json=missing, timeout=30)
    assert response.status_code == 404


def test_a_busy_server_is_skipped(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess]
) -> None:
    first, second, third = trio
    first.default_script = Script(status=503, error=BUSY)
    second.default_script = Script(status=503, error=BUSY)
    server = start_server()
    for stream in (True, False, True, False):
        response = httpx.post(
            server.base_url + "/api/v1/generate", json={"prompt": "x", "stream": stream}, timeout=30
        )
        assert response.status_code == 200, response.text
    assert _served(third) == 4 and _served(first) == _served(second) == 0
    assert first.generations and second.generations  # they were asked, and said busy
    found = _metrics(server)
    assert found[("llmserve_backend_server_generations_total", third.base_url)] == 4
    assert found[("llmserve_backend_server_failovers_total", first.base_url)] >= 1
    assert found[("llmserve_backend_server_up", first.base_url)] == 1  # busy is not down
    # Every server busy: Ollama's 503 reaches the client.
    third.default_script = Script(status=503, error=BUSY)
    response = httpx.post(server.base_url + "/api/v1/generate", json={"prompt": "x"}, timeout=30)
    assert response.status_code == 503 and response.json()["code"] == "backend_busy"
    assert response.headers["retry-after"]


def test_model_lists_say_where_each_model_lives(
    trio: list[OllamaDouble], start_server: Callable[..., ServerProcess]
) -> None:
    second = trio[1]
    second.add_model("qwen2.5:0.5b")
    server = start_server()
    everywhere = [d.base_url for d in trio]
    native = httpx.get(server.base_url + "/api/v1/models", timeout=10).json()["models"]
    where = {item["name"]: item["backends"] for item in native}
    assert where == {"llama3.2:latest": everywhere, "qwen2.5:0.5b": [second.base_url]}
    tags = httpx.get(server.base_url + "/api/tags", timeout=10).json()["models"]
    assert {item["name"]: item["backends"] for item in tags} == where
    openai = httpx.get(server.base_url + "/v1/models", timeout=10).json()["data"]
    assert {item["id"]: item["backends"] for item in openai} == where


def _metrics(server: ServerProcess) -> dict[tuple[str, str], float]:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "backend" in sample.labels:
                found[(sample.name, sample.labels["backend"])] = sample.value
    return found


def test_a_single_server_has_no_pool(trio: list[OllamaDouble], db_url: str, tmp_path: Path) -> None:
    """One URL: no per-server metrics nor ``backends`` in /ready (the simple case stays)."""
    with running_server(server_env(db_url, trio[0].base_url), tmp_path) as server:
        assert "backends" not in httpx.get(server.base_url + "/ready", timeout=10).json()
        assert "llmserve_backend_server" not in httpx.get(server.base_url + "/metrics").text
        models = httpx.get(server.base_url + "/api/v1/models", timeout=10).json()["models"]
        assert models[0]["backends"] == [trio[0].base_url]
