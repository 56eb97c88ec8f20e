"""Bodies that skip the middlewares never skip one that needs them.

The generation routes send their response bodies to ``scope[BODY_SEND]``, the ``send`` that
``RequestIdMiddleware`` was given, past the layers beneath it. A middleware that rewrites or
reads bodies (gzip, a tracer) must see every body wherever it is added: around the app (where
it wraps ``RequestIdMiddleware`` and the shortcut stays on) or beneath ``RequestIdMiddleware``,
right around the routes (where the shortcut must turn itself off).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.api.app import create_app
from llmserve.api.request_id import RequestIdMiddleware
from llmserve.settings import Settings
from tests.fakes.ollama_double import OllamaDouble, Script

TOKENS = ["hel", "lo ", "wor", "ld"]
MESSAGES = [{"role": "user", "content": "hi"}]

#: Every kind of body sent beneath the middlewares: whole JSON answers (the fast door and the
#: FastAPI route), SSE streams (native and OpenAI), Ollama's NDJSON stream.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("generate", "/api/v1/generate", {"prompt": "hi"}),
    ("generate stream", "/api/v1/generate", {"prompt": "hi", "stream": True}),
    ("chat", "/api/v1/chat", {"messages": MESSAGES}),
    ("chat stream", "/api/v1/chat", {"messages": MESSAGES, "stream": True}),
    (
        "openai stream",
        "/v1/chat/completions",
        {"model": "llama3.2", "messages": MESSAGES, "stream": True},
    ),
    ("ollama stream", "/api/chat", {"model": "llama3.2", "messages": MESSAGES}),
]


class UpperCaseBodies:
    """Rewrites every body: upper case (same length, so Content-Length stays right)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def upper(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": message.get("body", b"").upper()}
            await send(message)

        await self.app(scope, receive, upper)


class TraceBodies:
    """Reads every body without changing it, as a tracing middleware does."""

    seen: ClassVar[list[bytes]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def trace(message: Message) -> None:
            if message["type"] == "http.response.body":
                TraceBodies.seen.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, trace)


def gzip_everything(app: ASGIApp) -> GZipMiddleware:
    """Starlette's GZipMiddleware, compressing event streams and small bodies too."""
    return GZipMiddleware(app, minimum_size=1, exclude_content_types=())


MIDDLEWARES: dict[str, Callable[[ASGIApp], ASGIApp]] = {
    "gzip": gzip_everything,
    "upper case": UpperCaseBodies,
    "trace": TraceBodies,
}
CLASS_NAMES = {"gzip": "GZipMiddleware", "upper case": "UpperCaseBodies", "trace": "TraceBodies"}


@pytest.fixture
def build(settings: Settings) -> Iterator[Callable[[str, bool], TestClient]]:
    """``build(middleware, inner)``: the app with that middleware around the app (``inner``
    False: ``add_middleware`` after ``create_app``) or beneath ``RequestIdMiddleware``, right
    around the routes (``inner`` True: the last of the user's middlewares)."""
    clients: list[TestClient] = []

    def make(name: str, inner: bool) -> TestClient:
        app = create_app(settings)
        if inner:
            app.user_middleware.append(Middleware(MIDDLEWARES[name]))
        else:
            app.add_middleware(MIDDLEWARES[name])
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    TraceBodies.seen.clear()
    yield make
    for client in clients:
        client.__exit__(None, None, None)


def request_id_layer(app: ASGIApp) -> RequestIdMiddleware:
    """The app's RequestIdMiddleware, as built (the app has served a request)."""
    layer: Any = app.middleware_stack  # type: ignore[attr-defined]  # a FastAPI app, once started
    while not isinstance(layer, RequestIdMiddleware):
        layer = layer.app
    return layer


def post(client: TestClient, middleware: str, path: str, body: dict[str, Any]) -> str:
    """The answer's text as the client reads it, after checking that ``middleware`` made the
    bytes that went out of the app (read raw, before httpx decodes anything)."""
    with client.stream("POST", path, json=body) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200, raw
    if middleware == "gzip":
        assert response.headers["content-encoding"] == "gzip"
        return gzip.decompress(raw).decode()
    if middleware == "upper case":
        assert raw == raw.upper()
    else:
        assert b"".join(TraceBodies.seen) == raw
    return raw.decode()


def answer_in(text: str, middleware: str) -> bool:
    expected = [t.upper() for t in TOKENS] if middleware == "upper case" else TOKENS
    return all(token in text for token in expected)


def test_the_default_stack_sends_bodies_beneath_the_middlewares(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.enqueue(Script(tokens=TOKENS))
    assert (
        client.post("/api/v1/generate", json={"prompt": "hi"}).json()["response"] == "hello world"
    )
    assert request_id_layer(client.app).publishes_body_send


@pytest.mark.parametrize("middleware", MIDDLEWARES)
@pytest.mark.parametrize(("path", "body"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_a_middleware_around_the_app_sees_every_body_and_the_shortcut_stays(
    build: Callable[[str, bool], TestClient],
    ollama: OllamaDouble,
    middleware: str,
    path: str,
    body: dict[str, Any],
) -> None:
    client = build(middleware, False)
    ollama.enqueue(Script(tokens=TOKENS))
    assert answer_in(post(client, middleware, path, body), middleware)
    assert request_id_layer(client.app).publishes_body_send


@pytest.mark.parametrize("middleware", MIDDLEWARES)
@pytest.mark.parametrize(("path", "body"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_a_middleware_around_the_routes_turns_the_shortcut_off(
    build: Callable[[str, bool], TestClient],
    ollama: OllamaDouble,
    caplog: pytest.LogCaptureFixture,
    middleware: str,
    path: str,
    body: dict[str, Any],
) -> None:
    with caplog.at_level(logging.WARNING, logger="llmserve.api.request_id"):
        client = build(middleware, True)
        ollama.enqueue(Script(tokens=TOKENS))
        assert answer_in(post(client, middleware, path, body), middleware)
    assert not request_id_layer(client.app).publishes_body_send
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "llmserve.api.request_id"]
    assert warning.startswith(f"{CLASS_NAMES[middleware]} beneath RequestIdMiddleware")
