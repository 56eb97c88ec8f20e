"""Ollama's model and admin API on llmserve's port, against the Ollama double: ``/``, version,
tags, ps, show, pull, delete, copy, create, in Ollama's wire format and with llmserve's rules
(keys, the built-in model, names checked before Ollama sees them, audit rows)."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from llmserve.db.session import make_engine, make_sessions
from llmserve.services.keys import KeyService
from tests.fakes.double_testing import lines
from tests.fakes.ollama_double import OllamaDouble
from tests.integration.test_auth import bearer
from tests.integration.test_models_api import audit_rows, backend_calls

JSON_UTF8 = "application/json; charset=utf-8"
ADMIN_ROUTES = [
    ("POST", "/api/pull", {"model": "mistral:7b"}),
    ("DELETE", "/api/delete", {"model": "qwen2.5:0.5b"}),
    ("POST", "/api/copy", {"source": "llama3.2", "destination": "mine"}),
    ("POST", "/api/create", {"model": "mario", "from": "llama3.2"}),
]


@pytest.fixture
def keys(db_url: str) -> KeyService:
    return KeyService(make_sessions(make_engine(db_url)))


def upstream(ollama: OllamaDouble, method: str, path: str, body: object = None) -> httpx.Response:
    """The double's own answer, to compare llmserve's with."""
    return httpx.request(method, ollama.base_url + path, json=body, timeout=5)


# -- liveness and version ------------------------------------------------------------------------


def test_root_says_ollama_is_running(client: TestClient) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, "/")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == ("Ollama is running" if method == "GET" else "")


def test_version_is_the_backend_ollamas(client: TestClient, ollama: OllamaDouble) -> None:
    response = client.get("/api/version")
    assert (response.status_code, response.content) == (200, b'{"version":"0.12.0"}')
    assert response.headers["content-type"] == JSON_UTF8
    head = client.head("/api/version")
    assert (head.status_code, head.content) == (200, b"")


def test_version_with_ollama_down_is_503(make_client: Callable[..., TestClient]) -> None:
    client = make_client(OLLAMA_BASE_URL="http://127.0.0.1:9")
    response = client.get("/api/version")
    assert response.status_code == 503
    assert list(response.json()) == ["error"]


# -- tags, ps, show -------------------------------------------------------------------------------


TAGS_KEYS = ["name", "model", "modified_at", "size", "digest", "details"]


def test_tags_lists_ollamas_models_newest_first(client: TestClient, ollama: OllamaDouble) -> None:
    ollama.add_model("old:1b", modified_at="2024-01-01T00:00:00Z")
    ollama.add_model("mine/new:2b", modified_at="2099-01-01T00:00:00.5Z")
    response = client.get("/api/tags")
    assert response.headers["content-type"] == JSON_UTF8
    models = response.json()["models"]
    names = [item["name"] for item in models]
    assert names[0] == "mine/new:2b" and names[-1] == "old:1b"
    assert set(names) == {"mine/new:2b", "llama3.2:latest", "qwen2.5:0.5b", "old:1b"}
    theirs = {item["name"]: item for item in upstream(ollama, "GET", "/api/tags").json()["models"]}
    for item in models:
        assert list(item) == [*TAGS_KEYS, "backends"]
        assert item["backends"] == [ollama.base_url]  # llmserve's addition: where it lives
        assert item["model"] == item["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", item["digest"])
        mine = theirs[item["name"]]
        assert (item["size"], item["digest"], item["details"]) == (
            mine["size"],
            mine["digest"],
            mine["details"],
        )
    assert models[0]["modified_at"].startswith("2099-01-01T00:00:00.5")
    head = client.head("/api/tags")
    assert (head.status_code, head.content) == (200, b"")


def test_tags_with_no_model_is_an_empty_list(client: TestClient, ollama: OllamaDouble) -> None:
    for name in ollama.models:
        ollama.remove_model(name)
    assert client.get("/api/tags").content == b'{"models":[]}'


def test_ps_passes_ollamas_answer_through(client: TestClient, ollama: OllamaDouble) -> None:
    assert client.get("/api/ps").content == b'{"models":[]}'
    client.post("/api/generate", json={"model": "llama3.2", "prompt": ""})  # loads it
    (item,) = client.get("/api/ps").json()["models"]
    assert item == upstream(ollama, "GET", "/api/ps").json()["models"][0]
    assert item["name"] == "llama3.2:latest"
    assert {"size_vram", "expires_at", "context_length", "details"} <= set(item)


def test_show_passes_ollamas_answer_through(client: TestClient, ollama: OllamaDouble) -> None:
    response = client.post("/api/show", json={"model": "llama3.2"})
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_UTF8
    theirs = upstream(ollama, "POST", "/api/show", {"model": "llama3.2:latest"}).json()
    assert response.json() == theirs
    assert {"modelfile", "parameters", "template", "details", "model_info"} <= set(theirs)
    assert response.json()["capabilities"] == ["completion", "tools"]
    by_name = client.post("/api/show", content=b'{"name":"LLAMA3.2","bogus":1}')
    assert by_name.json() == theirs  # any Content-Type, unknown fields ignored, case too


def test_show_refusals(client: TestClient, ollama: OllamaDouble) -> None:
    cases = [
        ({}, 400, "model is required"),
        ({"model": "nosuch"}, 404, "model 'nosuch' not found"),
        ({"model": "a b"}, 400, "invalid model name"),
        ({"model": 5}, 400, None),
    ]
    for body, status, message in cases:
        response = client.post("/api/show", json=body)
        assert response.status_code == status, body
        assert list(response.json()) == ["error"]
        if message is not None:
            assert response.json() == {"error": message}
    assert client.post("/api/show", content=b"").json() == {"error": "missing request body"}
    assert [r.json for r in backend_calls(ollama, "/api/show")] == []


# -- pull -----------------------------------------------------------------------------------------


def test_pull_streams_ollamas_progress_as_ndjson(
    client: TestClient, ollama: OllamaDouble, db_url: str
) -> None:
    ollama.add_registry_model("mistral:7b", size=5_000)
    response = client.post("/api/pull", json={"model": "mistral:7b"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    events = lines(response)
    assert events[0] == {"status": "pulling manifest"}
    assert events[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    layers = [e for e in events if "digest" in e]
    assert "completed" not in layers[0] and layers[-1]["completed"] == layers[-1]["total"]
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", e["digest"]) for e in layers)
    assert "mistral:7b" in ollama.models
    (row,) = audit_rows(db_url)
    assert (row.action, row.target, row.outcome) == ("pull", "mistral:7b", "ok")


def test_pull_without_streaming_by_the_deprecated_name(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.add_registry_model("phi3")
    response = client.post("/api/pull", json={"name": "phi3", "stream": False})
    assert (response.status_code, response.content) == (200, b'{"status":"success"}')
    assert response.headers["content-type"] == "application/json"
    assert "phi3:latest" in ollama.models
    assert ollama.pulls[-1].stream is True  # llmserve reads Ollama's progress either way


def test_pull_of_an_unknown_model(client: TestClient, ollama: OllamaDouble, db_url: str) -> None:
    streamed = client.post("/api/pull", json={"model": "nosuchmodel"})
    assert streamed.status_code == 200
    first, last = lines(streamed)
    assert first == {"status": "pulling manifest"}
    assert list(last) == ["error"] and "file does not exist" in last["error"]
    whole = client.post("/api/pull", json={"model": "nosuchmodel", "stream": False})
    assert whole.status_code == 404
    assert list(whole.json()) == ["error"]
    assert [r.outcome for r in audit_rows(db_url)] == ["rejected", "rejected"]


def test_pull_refuses_invalid_names_before_ollama(client: TestClient, ollama: OllamaDouble) -> None:
    for body in ({"model": "a b"}, {"model": "../x"}, {}, {"model": "x" * 300}):
        response = client.post("/api/pull", json=body)
        assert (response.status_code, response.json()) == (400, {"error": "invalid model name"})
    assert client.post("/api/pull", json={"model": "m", "stream": "no"}).status_code == 400
    assert not backend_calls(ollama, "/api/pull")


# -- delete ---------------------------------------------------------------------------------------


def test_delete_answers_an_empty_200(client: TestClient, ollama: OllamaDouble, db_url: str) -> None:
    response = client.request("DELETE", "/api/delete", json={"model": "qwen2.5:0.5b"})
    assert (response.status_code, response.content) == (200, b"")
    assert "qwen2.5:0.5b" not in ollama.models
    (row,) = audit_rows(db_url)
    assert (row.action, row.target, row.outcome) == ("delete", "qwen2.5:0.5b", "ok")
    by_name = client.request("DELETE", "/api/delete", json={"name": "qwen2.5:0.5b"})
    assert (by_name.status_code, by_name.json()) == (
        404,
        {"error": "model 'qwen2.5:0.5b' not found"},
    )


def test_delete_keeps_the_built_in_and_the_active_model(
    client: TestClient, ollama: OllamaDouble
) -> None:
    built_in = client.request("DELETE", "/api/delete", json={"model": "LLAMA3.2:latest"})
    assert built_in.status_code == 403
    assert "cannot be deleted" in built_in.json()["error"]
    client.post("/api/v1/models/switch/qwen2.5:0.5b")
    active = client.request("DELETE", "/api/delete", json={"model": "qwen2.5:0.5b"})
    assert active.status_code == 409 and list(active.json()) == ["error"]
    assert {"llama3.2:latest", "qwen2.5:0.5b"} <= set(ollama.models)
    assert not backend_calls(ollama, "/api/delete")


def test_delete_refusals_never_reach_ollama(client: TestClient, ollama: OllamaDouble) -> None:
    cases = [
        ({}, "model is required"),
        ({"model": "a b"}, 'name "a b" is invalid'),
        ({"name": "../x"}, 'name "../x" is invalid'),
    ]
    for body, message in cases:
        response = client.request("DELETE", "/api/delete", json=body)
        assert (response.status_code, response.json()) == (400, {"error": message})
    assert not backend_calls(ollama, "/api/delete")


# -- copy -----------------------------------------------------------------------------------------


def test_copy_answers_an_empty_200(client: TestClient, ollama: OllamaDouble, db_url: str) -> None:
    response = client.post("/api/copy", json={"source": "llama3.2", "destination": "mine:v1"})
    assert (response.status_code, response.content) == (200, b"")
    assert "mine:v1" in ollama.models
    (row,) = audit_rows(db_url)
    assert (row.action, row.target, row.outcome) == ("copy", "llama3.2 -> mine:v1", "ok")
    client.post("/api/v1/models/switch/mine:v1")  # usable at once


def test_copy_refusals(client: TestClient, ollama: OllamaDouble, db_url: str) -> None:
    cases = [
        ({"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
        ({"source": "a b", "destination": "x"}, 400, 'source "a b" is invalid'),
        ({"destination": "x"}, 400, 'source "" is invalid'),
        ({"source": "llama3.2", "destination": "x/y/z/w"}, 400, 'destination "x/y/z/w" is invalid'),
        ({"source": "qwen2.5:0.5b", "destination": "LLAMA3.2"}, 403, None),
    ]
    for body, status, message in cases:
        response = client.post("/api/copy", json=body)
        assert response.status_code == status, body
        assert list(response.json()) == ["error"]
        if message is not None:
            assert response.json()["error"] == message
    # only the copy of a missing source reached Ollama
    assert [r.json["source"] for r in backend_calls(ollama, "/api/copy")] == ["nope"]
    assert [r.outcome for r in audit_rows(db_url)] == ["rejected", "refused"]


# -- create ---------------------------------------------------------------------------------------


def test_create_streams_ollamas_progress_and_passes_the_body_through(
    client: TestClient, ollama: OllamaDouble, db_url: str
) -> None:
    body = {
        "model": "mario",
        "from": "llama3.2",
        "system": "You are Mario.",
        "parameters": {"temperature": 0.7},
        "messages": [{"role": "user", "content": "hi"}],
        "license": "MIT",
        "future_field": [1, 2],
    }
    response = client.post("/api/create", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    statuses = [event["status"] for event in lines(response)]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert statuses == ollama.creates[-1].statuses
    known = {key: value for key, value in body.items() if key != "future_field"}
    assert ollama.creates[-1].request == {**known, "stream": True}
    (sent,) = [r.json for r in backend_calls(ollama, "/api/create")]
    assert sent == {**body, "stream": True}
    assert "mario:latest" in ollama.models
    shown = client.post("/api/show", json={"model": "mario"}).json()
    assert shown["system"] == "You are Mario."
    (row,) = audit_rows(db_url)
    assert (row.action, row.target, row.outcome) == ("create", "mario", "ok")


def test_create_without_streaming(client: TestClient, ollama: OllamaDouble) -> None:
    body = {"name": "luigi", "from": "llama3.2", "stream": False}
    response = client.post("/api/create", json=body)
    assert (response.status_code, response.content) == (200, b'{"status":"success"}')
    assert "luigi:latest" in ollama.models


def test_create_from_a_model_nobody_has(
    client: TestClient, ollama: OllamaDouble, db_url: str
) -> None:
    streamed = client.post("/api/create", json={"model": "m", "from": "nosuch"})
    assert streamed.status_code == 200
    assert lines(streamed) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    whole = client.post("/api/create", json={"model": "m", "from": "nosuch", "stream": False})
    assert (whole.status_code, whole.json()) == (
        404,
        {"error": "pull model manifest: file does not exist"},
    )
    assert [r.outcome for r in audit_rows(db_url)] == ["rejected", "rejected"]


def test_ollamas_own_create_refusals_keep_their_text(
    client: TestClient, ollama: OllamaDouble
) -> None:
    neither = client.post("/api/create", json={"model": "m"})
    assert (neither.status_code, neither.json()) == (
        400,
        {"error": "neither 'from' or 'files' was specified"},
    )
    typed = client.post("/api/create", json={"model": "m", "from": "llama3.2", "system": 5})
    assert typed.status_code == 400
    assert "CreateRequest.system" in typed.json()["error"]
    # Ollama's own 500 (a failure of Ollama's) is llmserve's 502 for a backend failure
    body = {"model": "m", "from": "llama3.2", "quantize": "q8_0"}
    quantized = client.post("/api/create", json=body)
    assert quantized.status_code == 502
    assert "quantization is only supported for F16, BF16 and F32 models" in (
        quantized.json()["error"]
    )


def test_create_refusals_never_reach_ollama(
    client: TestClient, ollama: OllamaDouble, db_url: str
) -> None:
    cases = [
        ({"model": "a b", "from": "llama3.2"}, 400, "invalid model name"),
        ({"from": "llama3.2"}, 400, "invalid model name"),
        ({"model": "m", "from": "bad name"}, 400, "invalid model name"),
        ({"model": "LLAMA3.2:latest", "from": "qwen2.5:0.5b"}, 403, None),
        ({"model": "m", "stream": "yes"}, 400, None),
    ]
    for body, status, message in cases:
        response = client.post("/api/create", json=body)
        assert response.status_code == status, body
        assert list(response.json()) == ["error"]
        if message is not None:
            assert response.json()["error"] == message
    assert not backend_calls(ollama, "/api/create")
    assert [(r.action, r.outcome) for r in audit_rows(db_url)] == [("create", "refused")]


# -- keys -----------------------------------------------------------------------------------------


def test_without_a_key_only_root_and_version_answer(
    make_client: Callable[..., TestClient], ollama: OllamaDouble
) -> None:
    secured = make_client(AUTH_REQUIRED=True)
    for method in ("GET", "HEAD"):
        assert secured.request(method, "/").status_code == 200
        assert secured.request(method, "/api/version").status_code == 200
    refused = [
        ("GET", "/api/tags", None),
        ("HEAD", "/api/tags", None),
        ("GET", "/api/ps", None),
        ("POST", "/api/show", {"model": "llama3.2"}),
        *ADMIN_ROUTES,
    ]
    for method, path, body in refused:
        response = secured.request(method, path, json=body)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        if method != "HEAD":
            assert list(response.json()) == ["error"], path
    assert not [r for r in ollama.requests if r.path != "/api/version"]


def test_a_plain_key_reads_and_only_an_admin_key_changes(
    make_client: Callable[..., TestClient], keys: KeyService, ollama: OllamaDouble
) -> None:
    secured = make_client(AUTH_REQUIRED=True)
    plain, _ = keys.create("plain", actor="test")
    admin, _ = keys.create("boss", admin=True, actor="test")
    assert secured.get("/api/tags", headers=bearer(plain)).status_code == 200
    assert secured.get("/api/ps", headers={"X-API-Key": plain}).status_code == 200
    shown = secured.post("/api/show", json={"model": "llama3.2"}, headers=bearer(plain))
    assert shown.status_code == 200
    ollama.add_registry_model("mistral:7b")
    for method, path, body in ADMIN_ROUTES:
        response = secured.request(method, path, json=body, headers=bearer(plain))
        assert (response.status_code, response.json()) == (
            403,
            {"error": "this action needs an admin API key"},
        ), path
    assert not [r for r in ollama.requests if r.path in {p for _, p, _ in ADMIN_ROUTES}]
    for method, path, body in ADMIN_ROUTES:
        response = secured.request(method, path, json=body, headers=bearer(admin))
        assert response.status_code == 200, (path, response.text)
