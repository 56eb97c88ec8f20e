"""Model management through the API, against the Ollama double."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import AuditRecord
from tests.fakes.ollama_double import OllamaDouble
from tests.integration.test_generate_api import sse_events

INVALID = ["../x", "%2e%2e", "a b", "a%00b", "x" * 300, "-x", "a//b", "a/b/c/d"]


def audit_rows(db_url: str) -> list[AuditRecord]:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
    finally:
        engine.dispose()


def backend_calls(ollama: OllamaDouble, path: str) -> list:
    return [r for r in ollama.requests if r.path == path]


def test_list_marks_active_and_built_in(client: TestClient) -> None:
    body = client.get("/api/v1/models").json()
    assert body["active"] == "llama3.2"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"llama3.2:latest", "qwen2.5:0.5b"}
    assert by_name["llama3.2:latest"]["active"] and by_name["llama3.2:latest"]["built_in"]
    assert not by_name["qwen2.5:0.5b"]["active"] and not by_name["qwen2.5:0.5b"]["built_in"]
    for item in body["models"]:
        assert item["model"] == item["name"]
        assert isinstance(item["size"], int) and item["digest"] and item["modified_at"]


def test_list_with_the_backend_down_is_503(make_client: Callable[..., TestClient]) -> None:
    client = make_client(OLLAMA_BASE_URL="http://127.0.0.1:9")
    assert client.get("/api/v1/models").status_code == 503


def test_active_is_the_built_in_model_on_an_empty_database(client: TestClient) -> None:
    assert client.get("/api/v1/models/active").json() == {"model": "llama3.2"}


def test_switch_then_generate_uses_the_new_model(
    client: TestClient, ollama: OllamaDouble, db_url: str
) -> None:
    response = client.post("/api/v1/models/switch/QWEN2.5:0.5b")
    assert response.status_code == 200
    assert response.json() == {"message": "Switched active model to QWEN2.5:0.5b"}
    assert client.get("/api/v1/models/active").json() == {"model": "qwen2.5:0.5b"}
    assert client.post("/api/v1/generate", json={"prompt": "hi"}).json()["model"] == (
        "qwen2.5:0.5b"
    )
    (row,) = audit_rows(db_url)
    assert (row.action, row.target, row.outcome) == ("switch", "QWEN2.5:0.5b", "ok")
    assert row.actor.startswith("anonymous@")


def test_switch_accepts_the_name_without_its_tag(client: TestClient) -> None:
    client.post("/api/v1/models/switch/qwen2.5:0.5b")
    response = client.post("/api/v1/models/switch/llama3.2:latest")
    assert response.status_code == 200
    assert client.get("/api/v1/models/active").json() == {"model": "llama3.2:latest"}


def test_switch_warms_the_new_model(client: TestClient, ollama: OllamaDouble) -> None:
    import time

    client.post("/api/v1/models/switch/qwen2.5:0.5b")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        loads = [r for r in backend_calls(ollama, "/api/generate") if r.json.get("prompt") == ""]
        if loads:
            break
        time.sleep(0.02)
    assert loads and loads[0].json["model"] == "qwen2.5:0.5b"


def test_switch_to_a_model_that_is_not_installed_is_404(client: TestClient, db_url: str) -> None:
    response = client.post("/api/v1/models/switch/mistral")
    assert response.status_code == 404
    assert "not found locally" in response.json()["detail"]
    assert client.get("/api/v1/models/active").json() == {"model": "llama3.2"}
    (row,) = audit_rows(db_url)
    assert (row.action, row.outcome) == ("switch", "rejected")


def test_delete_the_built_in_model_is_403(client: TestClient, ollama: OllamaDouble) -> None:
    for name in ("llama3.2", "llama3.2:latest", "LLAMA3.2"):
        response = client.delete(f"/api/v1/models/{name}")
        assert response.status_code == 403
        assert "cannot be deleted" in response.json()["detail"]
    assert not backend_calls(ollama, "/api/delete")


def test_delete_the_active_model_is_409(client: TestClient, ollama: OllamaDouble) -> None:
    client.post("/api/v1/models/switch/qwen2.5:0.5b")
    response = client.delete("/api/v1/models/qwen2.5:0.5b")
    assert response.status_code == 409
    assert not backend_calls(ollama, "/api/delete")


def test_delete_removes_the_model(client: TestClient, ollama: OllamaDouble, db_url: str) -> None:
    response = client.delete("/api/v1/models/qwen2.5:0.5b")
    assert response.status_code == 200
    assert response.json() == {"message": "Deleted model qwen2.5:0.5b"}
    assert "qwen2.5:0.5b" not in ollama.models
    assert client.delete("/api/v1/models/qwen2.5:0.5b").status_code == 404
    assert [(r.action, r.outcome) for r in audit_rows(db_url)] == [
        ("delete", "ok"),
        ("delete", "rejected"),
    ]


def test_names_with_slashes_and_colons_reach_the_route(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.add_model("hf.co/org/repo:Q4_K_M")
    assert client.post("/api/v1/models/switch/hf.co/org/repo:Q4_K_M").status_code == 200
    client.post("/api/v1/models/switch/llama3.2")
    assert client.delete("/api/v1/models/hf.co/org/repo:Q4_K_M").status_code == 200


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_400_and_never_reach_ollama(
    client: TestClient, ollama: OllamaDouble, name: str
) -> None:
    before = len(ollama.requests)
    # 404/405: the HTTP client itself resolved "../" into another path.
    assert client.delete(f"/api/v1/models/{name}").status_code in (400, 404, 405)
    assert client.post(f"/api/v1/models/switch/{name}").status_code in (400, 404, 405)
    assert client.post("/api/v1/models/pull", json={"name": name}).status_code == 400
    calls = ollama.requests[before:]
    assert not [r for r in calls if r.path in ("/api/delete", "/api/pull")]


@pytest.mark.parametrize("raw", ["/api/v1/models/switch/..%2Fx", "/api/v1/models/%2e%2e"])
def test_path_tricks_are_rejected(client: TestClient, ollama: OllamaDouble, raw: str) -> None:
    response = client.request("POST" if "switch" in raw else "DELETE", raw)
    assert response.status_code in (400, 404, 405)
    assert response.status_code != 500
    assert not backend_calls(ollama, "/api/delete")


def test_pull_without_stream(client: TestClient, ollama: OllamaDouble, db_url: str) -> None:
    ollama.add_registry_model("mistral:7b", size=4_000)
    response = client.post("/api/v1/models/pull", json={"name": "mistral:7b"})
    assert response.status_code == 200
    assert response.json() == {"status": "success"}
    assert "mistral:7b" in ollama.models
    (row,) = audit_rows(db_url)
    assert (row.action, row.target, row.outcome) == ("pull", "mistral:7b", "ok")


def test_pull_streams_progress(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.add_registry_model("mistral:7b", size=4_000)
    response = client.post("/api/v1/models/pull?stream=true", json={"name": "mistral:7b"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(data) for kind, data in sse_events(response.text) if kind == "message"]
    assert events[0] == {"status": "pulling manifest"}
    layers = [e for e in events if "digest" in e]
    assert layers and all(e["total"] > 0 for e in layers)
    assert any("completed" in e for e in layers)
    assert events[-1] == {"status": "success"}


def test_pull_of_an_unknown_model_is_404_not_success(
    client: TestClient, ollama: OllamaDouble, db_url: str
) -> None:
    response = client.post("/api/v1/models/pull", json={"name": "nosuchmodel"})
    assert response.status_code == 404
    assert "nosuchmodel" in response.json()["detail"]
    streamed = client.post("/api/v1/models/pull?stream=true", json={"name": "nosuchmodel"})
    events = sse_events(streamed.text)
    assert events[-1][0] == "error"
    assert "success" not in streamed.text
    assert "nosuchmodel" not in [m.split(":")[0] for m in ollama.models]
    assert [r.outcome for r in audit_rows(db_url)] == ["rejected", "rejected"]


def test_pull_body_is_strict(client: TestClient) -> None:
    assert client.post("/api/v1/models/pull", json={}).status_code == 422
    assert client.post("/api/v1/models/pull", json={"name": "x", "nme": 1}).status_code == 422
