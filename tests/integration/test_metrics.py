"""Prometheus metrics at /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.ollama_double import OllamaDouble, Script


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_generations_requests_tokens_and_latency_are_counted(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=["a", "b", "c"]))
    ollama.enqueue(Script(tokens=["a", "b"], error_after=1, error="boom"))
    client.post("/api/v1/generate", json={"prompt": "x"})
    client.post("/api/v1/generate", json={"prompt": "x", "stream": True})
    client.get("/api/v1/models/active")
    client.get("/no/such/path")  # labelled "unmatched", never with the raw path
    found = samples(client)
    route = "/api/v1/generate"
    assert found[("llmserve_generations_total", (("route", route), ("status", "ok")))] == 1
    assert found[("llmserve_generations_total", (("route", route), ("status", "error")))] == 1
    assert found[("llmserve_tokens_generated_total", (("model", "llama3.2"),))] == 4
    assert found[("llmserve_time_to_first_token_seconds_count", (("route", route),))] == 2
    assert found[("llmserve_generation_duration_seconds_count", (("route", route),))] == 2
    kind = (("kind", "backend_stream_error"),)
    assert found[("llmserve_backend_errors_total", kind)] == 1
    http = "llmserve_http_requests_total"
    assert found[(http, (("route", route), ("status", "200")))] == 2
    assert found[(http, (("route", "/api/v1/models/active"), ("status", "200")))] == 1
    assert found[(http, (("route", "unmatched"), ("status", "404")))] == 1
    assert not any("/no/such/path" in str(labels) for _, labels in found)
    assert found[("llmserve_generations_in_flight", ())] == 0
    assert found[("llmserve_generations_queued", ())] == 0
    assert found[("llmserve_backend_up", ())] == 1


def test_backend_down_is_visible(make_client, ollama: OllamaDouble) -> None:  # type: ignore[no-untyped-def]
    client = make_client(OLLAMA_BASE_URL="http://127.0.0.1:9")
    client.post("/api/v1/generate", json={"prompt": "x"})
    found = samples(client)
    assert found[("llmserve_backend_up", ())] == 0
    assert found[("llmserve_backend_errors_total", (("kind", "backend_unavailable"),))] == 1
