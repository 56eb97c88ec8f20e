"""``POST /api/v1/generate``.

Two doors to one handler (:func:`answer`). The FastAPI route declares the endpoint (OpenAPI,
validation, FastAPI's error formats); :class:`FastGenerate`, a raw ASGI route placed before it,
takes every request whose body is ``application/json`` that validates against the schema, and
hands anything else (a bad body, another content type) to the FastAPI route unchanged, so every
error keeps its one format. FastAPI's per-request machinery (request object, dependency
solving, body parsing in Python, exception wrappers) was a quarter of a request's CPU.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Message, Receive, Scope, Send

from llmserve import errors
from llmserve.api.errors import error_response
from llmserve.api.generating import run_generation, runtime_in
from llmserve.api.openapi import GENERATION_ERRORS, error_responses, event_stream
from llmserve.api.request_id import BODY_SEND
from llmserve.api.schemas import GenerateRequest, GenerateResponse
from llmserve.api.sse import EventStream, generation_events
from llmserve.services.generation import Generation

router = APIRouter(prefix="/api/v1", tags=["generate"])

ROUTE = "/api/v1/generate"


def generation_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a native generation route: ``what`` as JSON, or SSE events
    (``data: {"response": …}`` …, ``data: {}``; an ``error`` event after the first byte)."""
    return {
        200: event_stream(
            f"{what}, or Server-Sent Events with `stream: true`.", ["message", "error"]
        ),
        **error_responses(*GENERATION_ERRORS, face="native"),
    }


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=generation_responses("The whole text"),
)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Generate text with the active model; `stream: true` answers with Server-Sent Events."""
    return await answer(body, request.scope, request.receive)


async def answer(body: GenerateRequest, scope: Scope, receive: Receive) -> Response:
    """The response to a valid request (an LlmserveError before the first byte)."""
    generation = await run_generation(
        scope, receive, body.to_domain(), route=ROUTE, stream=body.stream
    )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if body.stream:
        return EventStream(
            generation_events(generation),
            ping_interval=runtime_in(scope).settings.SSE_PING_INTERVAL_S,
        )
    return whole_answer(generation, "response", generation.text)


def whole_answer(generation: Generation, field: str, answer: object) -> JsonAnswer:
    """A finished generation as the native API answers it: ``field`` (``response`` or
    ``message``), then ``model``, ``done_reason`` and ``usage`` — the response model's fields
    in its order, encoded without building the model."""
    result = generation.result
    assert result is not None
    payload = {
        field: answer,
        "model": generation.model,
        "done_reason": result.done_reason,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
        },
    }
    return JsonAnswer(orjson.dumps(payload))


class JsonAnswer(Response):
    """A JSON body whose bytes go to the send beneath the middlewares (see ``api/sse.py``)."""

    media_type = "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        await scope.get(BODY_SEND, send)({"type": "http.response.body", "body": self.body})


_JSON = (b"application/json", b"application/json; charset=utf-8")


class FastGenerate:
    """The raw ASGI door to :func:`answer` (see the module's docstring)."""

    def __init__(self, app_router: Router, label: BaseRoute) -> None:
        self.app_router = app_router  # routes again, without this door, what is not taken here
        self.label = label  # the FastAPI route, as the metrics' route label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        if content_type is None or content_type.lower() not in _JSON:
            await self._to_fastapi(scope, receive, send, None)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body arrived: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            body = GenerateRequest.model_validate_json(raw)
        except ValidationError:
            await self._to_fastapi(scope, receive, send, raw)  # its error, in its format
            return
        scope["route"] = self.label
        try:
            response = await answer(body, scope, receive)
        except errors.LlmserveError as exc:
            response = error_response(exc)  # what the app's exception handler answers
        await response(scope, receive, send)

    async def _to_fastapi(
        self, scope: Scope, receive: Receive, send: Send, raw: bytes | None
    ) -> None:
        if raw is not None:
            receive = _replay(raw, receive)
        scope[_SKIP] = True
        await self.app_router.app(scope, receive, send)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """``receive`` that first gives back the body already read."""
    pending: list[Message] = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive_again() -> Message:
        return pending.pop() if pending else await receive()

    return receive_again


_SKIP = "llmserve.fast_route_declined"


class _FastRoute(Route):
    """Matches POST only, and not a request the fast door handed back to the router; anything
    else falls through to the FastAPI route (its 405, its 422)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("method") != "POST" or _SKIP in scope:
            return Match.NONE, {}
        return super().matches(scope)


def install_fast_route(app_router: Router) -> None:
    """Put :class:`FastGenerate` in front of the app's routes."""
    label = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == ROUTE)
    door = FastGenerate(app_router, label)
    app_router.routes.insert(0, _FastRoute(ROUTE, endpoint=door, methods=["POST"]))
