"""Key policy through the app, on the real PostgreSQL: rpm, tpm, concurrency, budgets and
allowed models on every API surface, with each surface's own error shape and OpenAI's rate-limit
headers; refused requests count for nothing; tokens are charged when a generation ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from llmserve.db.session import make_engine, make_sessions
from llmserve.db.tables import KeyUsageRecord
from llmserve.services.keys import KeyService
from llmserve.services.policy import KeyPolicy
from tests.fakes.ollama_double import OllamaDouble, Script

#: One request per surface: (method, path, body, how the surface's error body is read).
SURFACES = {
    "native": ("/api/v1/generate", {"prompt": "hi"}, lambda b: b["code"]),
    "native chat": (
        "/api/v1/chat",
        {"messages": [{"role": "user", "content": "hi"}]},
        lambda b: b["code"],
    ),
    "openai": (
        "/v1/chat/completions",
        {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        lambda b: b["error"]["code"],
    ),
    "ollama": (
        "/api/chat",
        {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}]},
        lambda b: b["error"],
    ),
    "ollama embed": ("/api/embed", {"model": "llama3.2", "input": "hi"}, lambda b: b["error"]),
}


def key_with(keys: KeyService, name: str, **limits: object) -> dict[str, str]:
    key, _ = keys.create(name, policy=KeyPolicy(**limits), actor="test")  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {key}"}


def usage(db_url: str) -> list[KeyUsageRecord]:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return list(session.scalars(select(KeyUsageRecord)))
    finally:
        engine.dispose()


def wait_for_minute_start(margin_s: float = 8.0) -> None:
    """Sleep past a minute boundary if fewer than ``margin_s`` seconds of this minute remain, so
    the test's requests share one calendar minute."""
    left = 60 - datetime.now(UTC).second - datetime.now(UTC).microsecond / 1e6
    if left < margin_s:
        time.sleep(left + 0.1)


@pytest.mark.parametrize("surface", list(SURFACES))
def test_rpm_admits_exactly_n_per_minute_then_429_with_openai_headers(
    secured: TestClient, keys: KeyService, surface: str
) -> None:
    path, body, _ = SURFACES[surface]
    auth = key_with(keys, "limited", rpm=3)
    wait_for_minute_start()
    statuses = [secured.post(path, json=body, headers=auth).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = secured.post(path, json=body, headers=auth)
    assert refused.status_code == 429
    headers = refused.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_model_outside_the_keys_list_is_403_in_the_surfaces_shape(
    secured: TestClient, keys: KeyService, ollama: OllamaDouble, surface: str
) -> None:
    path, body, read = SURFACES[surface]
    auth = key_with(keys, "qwen-only", models=("qwen*",))
    response = secured.post(path, json=body, headers=auth)
    assert response.status_code == 403
    assert read(response.json()) == "model_not_allowed" or "may not use model" in read(
        response.json()
    )
    assert ollama.generations == [] and ollama.embeddings == []


def test_allowed_models_accept_names_and_globs(secured: TestClient, keys: KeyService) -> None:
    auth = key_with(keys, "some", models=("llama3.2", "qwen2*"))
    for model in ("llama3.2", "llama3.2:latest", "qwen2.5:0.5b"):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        assert secured.post("/v1/chat/completions", json=body, headers=auth).status_code == 200


def test_refused_requests_count_for_nothing_and_tokens_are_charged_at_the_end(
    secured: TestClient, keys: KeyService, db_url: str, ollama: OllamaDouble
) -> None:
    auth = key_with(keys, "tokens", rpm=100, tpm=20)
    wait_for_minute_start()
    ollama.enqueue(Script(tokens=["a"] * 10, prompt_eval_count=5))
    assert secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth).is_success
    ollama.enqueue(Script(tokens=["a"] * 10, prompt_eval_count=5))
    assert secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth).is_success
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # charged in the background
        rows = [row for row in usage(db_url) if row.span == "minute"]
        if rows and rows[0].tokens >= 30:
            break
        time.sleep(0.05)
    (row,) = rows
    assert (row.requests, row.tokens) == (2, 30)
    refused = secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert "tokens per minute" in refused.json()["detail"]
    assert refused.headers["x-ratelimit-limit-tokens"] == "20"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    (row,) = [row for row in usage(db_url) if row.span == "minute"]
    assert row.requests == 2  # the refused request was not counted


def test_concurrency_limit_counts_running_generations(
    secured: TestClient, keys: KeyService, ollama: OllamaDouble
) -> None:
    auth = key_with(keys, "one-at-a-time", concurrency=1)
    ollama.enqueue(Script(tokens=["t"] * 20, delay_s=0.05))
    body = {"prompt": "x", "stream": True}
    with secured.stream("POST", "/api/v1/generate", json=body, headers=auth) as running:
        assert running.status_code == 200
        second = secured.post("/api/v1/generate", json={"prompt": "y"}, headers=auth)
        assert second.status_code == 429
        assert "generations of this key are running" in second.json()["detail"]
        for _ in running.iter_lines():
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the lease goes back in the background
        if secured.post("/api/v1/generate", json={"prompt": "z"}, headers=auth).is_success:
            return
        time.sleep(0.05)
    pytest.fail("the lease never came back")


def test_a_spent_budget_refuses_until_the_period_ends(
    secured: TestClient, keys: KeyService, ollama: OllamaDouble
) -> None:
    auth = key_with(keys, "budgeted", budget=10, budget_period="month")
    ollama.enqueue(Script(tokens=["a"] * 8, prompt_eval_count=4))
    assert secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth).is_success
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        refused = secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth)
        if refused.status_code == 429:
            break
        time.sleep(0.05)
    assert refused.status_code == 429
    assert "budget of 10 tokens per month" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) > 60  # the month's end


def test_rejections_are_counted_by_reason_in_metrics(secured: TestClient, keys: KeyService) -> None:
    auth = key_with(keys, "metered", rpm=1, models=("llama3*",))
    wait_for_minute_start()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    secured.post("/v1/chat/completions", json=body, headers=auth)
    secured.post("/v1/chat/completions", json=body, headers=auth)
    secured.post("/v1/chat/completions", json={**body, "model": "qwen2.5:0.5b"}, headers=auth)
    text = secured.get("/metrics").text
    assert 'llmserve_policy_rejections_total{reason="rpm"} 1.0' in text
    assert 'llmserve_policy_rejections_total{reason="model"} 1.0' in text


def test_a_key_without_limits_never_touches_the_counters(
    secured: TestClient, keys: KeyService, db_url: str
) -> None:
    key, _ = keys.create("plain", actor="test")
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        assert secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth).is_success
    assert usage(db_url) == []


def test_an_update_reaches_the_running_server(secured: TestClient, keys: KeyService) -> None:
    auth = key_with(keys, "changing")
    assert secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth).is_success
    keys.update("changing", changes={"models": ("qwen*",)}, actor="test")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = secured.post("/api/v1/generate", json={"prompt": "x"}, headers=auth)
        if response.status_code == 403:
            return
        time.sleep(0.1)
    pytest.fail("the server kept the old policy")


def test_a_key_sees_only_its_allowed_models_in_every_list(
    secured: TestClient, keys: KeyService
) -> None:
    auth = key_with(keys, "qwen-lists", models=("qwen*",))
    native = secured.get("/api/v1/models", headers=auth).json()["models"]
    assert [m["name"] for m in native] == ["qwen2.5:0.5b"]
    openai = secured.get("/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in openai] == ["qwen2.5:0.5b"]
    assert secured.get("/v1/models/llama3.2", headers=auth).status_code == 404
    assert secured.get("/v1/models/qwen2.5:0.5b", headers=auth).status_code == 200
    tags = secured.get("/api/tags", headers=auth).json()["models"]
    assert [m["name"] for m in tags] == ["qwen2.5:0.5b"]
    shown = secured.post("/api/show", json={"model": "llama3.2"}, headers=auth)
    assert shown.status_code == 404 and shown.json() == {"error": "model 'llama3.2' not found"}
    assert secured.post("/api/show", json={"model": "qwen2.5:0.5b"}, headers=auth).is_success
    unrestricted = key_with(keys, "all-lists")
    assert len(secured.get("/v1/models", headers=unrestricted).json()["data"]) == 2


def test_sqlite_gives_the_same_semantics_in_one_process(
    make_client: Callable[..., TestClient], tmp_path: Path, ollama: OllamaDouble
) -> None:
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    client = make_client(AUTH_REQUIRED=True, DATABASE_URL=url)  # migrates the file
    keys = KeyService(make_sessions(make_engine(url)))
    auth = key_with(keys, "lite", rpm=2, concurrency=1)
    wait_for_minute_start()
    ollama.enqueue(Script(tokens=["t"] * 10, delay_s=0.05))
    with client.stream(
        "POST", "/api/v1/generate", json={"prompt": "x", "stream": True}, headers=auth
    ) as running:
        busy = client.post("/api/v1/generate", json={"prompt": "y"}, headers=auth)
        assert busy.status_code == 429 and "running" in busy.json()["detail"]
        for _ in running.iter_lines():
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the lease goes back in the background
        second = client.post("/api/v1/generate", json={"prompt": "z"}, headers=auth)
        if second.status_code == 200:
            break
        assert "running" in second.json()["detail"]
        time.sleep(0.05)
    assert second.status_code == 200
    third = client.post("/api/v1/generate", json={"prompt": "z"}, headers=auth)
    assert third.status_code == 429 and "requests per minute" in third.json()["detail"]


def test_concurrent_admits_in_one_batch_are_exact(keys: KeyService, db_url: str) -> None:
    """Thirty admits at once for rpm=10 and concurrency=4: a batch counts each in arrival order
    and undoes the refused ones in the same transaction."""
    import asyncio

    from llmserve.services.keys import Principal
    from llmserve.services.policy import PolicyService

    policy = KeyPolicy(rpm=10, concurrency=4)
    _, record = keys.create("burst", policy=policy, actor="test")
    principal = Principal(record.id, record.name, False, policy)
    wait_for_minute_start()

    async def run() -> list[object]:
        engine = make_engine(db_url)
        service = PolicyService(engine)
        await service.start()
        try:
            outcomes = await asyncio.gather(
                *(service.admit(principal, "llama3.2") for _ in range(30)),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if not isinstance(outcome, Exception):
                    service.settle(outcome, 1)  # type: ignore[arg-type]
            await service.flush()
            return outcomes
        finally:
            await service.stop()
            engine.dispose()

    outcomes = asyncio.run(run())
    admitted = [o for o in outcomes if not isinstance(o, Exception)]
    reasons = sorted(getattr(o, "reason", "?") for o in outcomes if isinstance(o, Exception))
    assert len(admitted) == 4  # the concurrency limit: four leases at once
    assert reasons == ["concurrency"] * 6 + ["rpm"] * 20
    (row,) = [row for row in usage(db_url) if row.span == "minute"]
    assert (row.requests, row.tokens) == (4, 4)  # refused ones count for nothing


def test_loading_a_model_through_ollamas_api_respects_the_keys_models(
    secured: TestClient, keys: KeyService, ollama: OllamaDouble
) -> None:
    auth = key_with(keys, "no-llama-loads", models=("qwen*",))
    refused = secured.post("/api/chat", json={"model": "llama3.2"}, headers=auth)
    assert refused.status_code == 403 and list(refused.json()) == ["error"]
    loaded = secured.post("/api/chat", json={"model": "qwen2.5:0.5b"}, headers=auth)
    assert loaded.json()["done_reason"] == "load"
