"""API keys and scopes: deny by default, 401/403, constant-time hashes, audit."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import ApiKeyRecord, AuditRecord, RequestLogRecord
from llmserve.services.keys import KeyService, parse_duration
from tests.fakes.ollama_double import OllamaDouble

# /metrics: unless METRICS_REQUIRE_AUTH=true; "/" and /api/version: Ollama's clients probe them
# before they send a key.
PUBLIC = {"/health", "/ready", "/metrics", "/", "/api/version"}
#: Ollama's model and admin routes, which must be among those refused without a key.
OLLAMA_MODEL_ROUTES = {
    ("GET", "/api/tags"),
    ("HEAD", "/api/tags"),
    ("GET", "/api/ps"),
    ("POST", "/api/show"),
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/copy"),
    ("POST", "/api/create"),
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "llama3.2", path)


def all_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path) of every route: the OpenAPI ones and the undocumented (docs) ones."""
    found = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    for route in app.routes:
        if hasattr(route, "path"):
            found |= {(m, route.path) for m in route.methods - {"HEAD", "OPTIONS"}}
    return found


def test_every_route_but_the_public_ones_refuses_an_anonymous_request(secured: TestClient) -> None:
    routes = all_routes(secured.app)
    assert {("POST", "/api/v1/generate"), ("POST", "/api/v1/models/pull")} <= routes
    assert routes >= OLLAMA_MODEL_ROUTES
    assert {
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/api/version"),
        ("HEAD", "/api/version"),
    } <= routes
    assert {p for _, p in routes} >= PUBLIC
    checked = 0
    for method, path in sorted(routes):
        response = secured.request(method, _concrete(path))
        if path in PUBLIC:
            assert response.status_code != 401, path
            continue
        assert response.status_code == 401, f"{method} {path} is open"
        assert response.headers["www-authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 10
    # A path nobody registered is refused before routing, too (deny by default).
    assert secured.get("/api/v1/not-a-route").status_code == 401


def test_keys_are_prefixed_random_and_only_hashed(keys: KeyService, db_url: str) -> None:
    key, record = keys.create("app", actor="test")
    assert re.fullmatch(r"llms_[A-Za-z0-9_-]{43}", key)
    assert key.startswith(record.prefix) and len(record.prefix) == 13
    other, _ = keys.create("app2", actor="test")
    assert other != key
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        stored = session.scalars(select(ApiKeyRecord)).all()
    engine.dispose()
    for row in stored:
        assert key not in (row.salt, row.key_hash, row.prefix, row.name)
        assert len(row.key_hash) == 64


def test_plain_and_admin_scopes(
    secured: TestClient, keys: KeyService, ollama: OllamaDouble
) -> None:
    plain, _ = keys.create("plain", actor="test")
    admin, _ = keys.create("boss", admin=True, actor="test")
    assert secured.post("/api/v1/generate", json={"prompt": "x"}, headers=bearer(plain)).is_success
    assert secured.get("/api/v1/models", headers=bearer(plain)).is_success
    assert secured.get("/api/v1/models/active", headers={"X-API-Key": plain}).is_success
    for method, path, body in [
        ("POST", "/api/v1/models/switch/qwen2.5:0.5b", None),
        ("DELETE", "/api/v1/models/qwen2.5:0.5b", None),
        ("POST", "/api/v1/models/pull", {"name": "qwen2.5:0.5b"}),
    ]:
        response = secured.request(method, path, json=body, headers=bearer(plain))
        assert response.status_code == 403, path
        assert response.json()["code"] == "forbidden"
    assert "qwen2.5:0.5b" in ollama.models
    switched = secured.post("/api/v1/models/switch/qwen2.5:0.5b", headers=bearer(admin))
    assert switched.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer llms_nottherightkeyatallxxxxxxxxxxxxxxxxxxxxxxxxxx"},
        {"Authorization": "Bearer something-else"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": ""},
    ],
)
def test_missing_or_unknown_keys_are_401(secured: TestClient, headers: dict[str, str]) -> None:
    response = secured.post("/api/v1/generate", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "WWW-Authenticate" in response.headers


def test_a_key_with_one_wrong_character_is_refused(secured: TestClient, keys: KeyService) -> None:
    key, _ = keys.create("app", actor="test")
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")  # same prefix, wrong secret
    assert secured.get("/api/v1/models/active", headers=bearer(forged)).status_code == 401
    assert secured.get("/api/v1/models/active", headers=bearer(key)).status_code == 200


def test_revoked_and_expired_keys_are_401(
    secured: TestClient, keys: KeyService, db_url: str
) -> None:
    revoked, record = keys.create("gone", actor="test")
    expired, _ = keys.create("old", actor="test")
    assert secured.get("/api/v1/models/active", headers=bearer(revoked)).status_code == 200
    keys.revoke(record.prefix, actor="test")
    engine = make_engine(db_url)
    with make_sessions(engine).begin() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(
            update(ApiKeyRecord).where(ApiKeyRecord.name == "old").values(expires_at=past)
        )
    engine.dispose()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the server's key cache follows within a second
        first = secured.get("/api/v1/models/active", headers=bearer(revoked))
        second = secured.get("/api/v1/models/active", headers=bearer(expired))
        if first.status_code == second.status_code == 401:
            break
        time.sleep(0.05)
    assert "revoked" in first.json()["detail"]
    assert "expired" in second.json()["detail"]


def test_openai_routes_answer_auth_errors_in_openai_envelope(secured: TestClient) -> None:
    response = secured.get("/v1/models")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert error["message"]


def test_request_log_and_audit_rows_carry_the_key(
    make_client: Callable[..., TestClient], keys: KeyService, db_url: str
) -> None:
    client = make_client(AUTH_REQUIRED=True)
    admin, record = keys.create("ops", admin=True, actor="cli:alice")
    client.post("/api/v1/generate", json={"prompt": "x"}, headers=bearer(admin))
    client.post("/api/v1/models/switch/qwen2.5:0.5b", headers=bearer(admin))
    client.__exit__(None, None, None)  # flushes the request log and last_used_at
    engine = make_engine(db_url)
    with make_sessions(engine)() as session:
        (row,) = session.scalars(select(RequestLogRecord)).all()
        audit = [(a.actor, a.action, a.target) for a in session.scalars(select(AuditRecord))]
        used = session.scalar(select(ApiKeyRecord.last_used_at).where(ApiKeyRecord.id == record.id))
    engine.dispose()
    assert row.api_key_id == record.id
    assert ("cli:alice", "key_create", "ops") in audit
    assert ("key:ops", "switch", "qwen2.5:0.5b") in audit
    assert used is not None


def test_keys_never_reach_the_logs(
    secured: TestClient, keys: KeyService, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = keys.create("quiet", actor="test")
    with caplog.at_level(logging.DEBUG):
        secured.post("/api/v1/generate", json={"prompt": "x"}, headers=bearer(key))
        secured.get("/api/v1/models", headers={"X-API-Key": key})
        secured.get("/api/v1/models", headers=bearer(key + "x"))
    assert caplog.records, "nothing was logged: the test would prove nothing"
    assert key not in caplog.text
    assert key[13:] not in caplog.text


def test_without_auth_everyone_is_served(client: TestClient) -> None:
    assert client.post("/api/v1/generate", json={"prompt": "x"}).status_code == 200
    assert client.post("/api/v1/models/switch/qwen2.5:0.5b").status_code == 200


def test_a_warning_when_open_on_a_non_loopback_address(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        make_client(HOST_BIND_IP="0.0.0.0")
    assert "AUTH_REQUIRED=false" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_client(HOST_BIND_IP="127.0.0.1")
    assert "AUTH_REQUIRED=false" not in caplog.text


@pytest.mark.parametrize(("text", "seconds"), [("30d", 2592000), ("12h", 43200), ("2w", 1209600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "0d", "3y"])
def test_bad_durations(text: str) -> None:
    from llmserve.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        parse_duration(text)


def test_metrics_can_require_a_key(
    make_client: Callable[..., TestClient], keys: KeyService
) -> None:
    open_metrics = make_client(AUTH_REQUIRED=True)
    assert open_metrics.get("/metrics").status_code == 200
    closed = make_client(AUTH_REQUIRED=True, METRICS_REQUIRE_AUTH=True)
    assert closed.get("/metrics").status_code == 401
    key, _ = keys.create("prometheus", actor="test")
    assert closed.get("/metrics", headers=bearer(key)).status_code == 200
