"""Ollama's generation API: ``POST /api/generate``, ``/api/chat``, ``/api/embed`` and the
legacy ``/api/embeddings``, in Ollama's own wire format (``api/ollama_wire.py``).

A thin face: each route reads its body the way Ollama does (``api/ollama_schemas.py``), hands
the conversation to the one generation entry point (admission, timeouts, cancellation, request
log and metrics, under these route names) and writes what comes back as Ollama would. The
request names its model: any installed one (``name`` means ``name:latest``). A request with
nothing to generate loads the model (``done_reason: "load"``), or unloads it with
``keep_alive: 0`` (``"unload"``), as Ollama does.

Where llmserve still differs from Ollama, on purpose: every answer that holds tool calls ends
with ``done_reason: "tool_calls"`` (Ollama says ``stop``), and the statuses of llmserve's own
refusals (429 for admission and limits, 401/403 for keys, 413 for size) are kept, with Ollama's
``{"error": "…"}`` body.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from llmserve import errors
from llmserve.api.deps import runtime_of
from llmserve.api.generating import key_in, run_generation
from llmserve.api.ollama_schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    parse_body,
)
from llmserve.api.ollama_wire import (
    NDJSON_HEADERS,
    SHUTDOWN_LINE,
    Endpoint,
    OllamaLines,
    as_ollama,
    error_line,
    load_object,
    openapi_body,
    whole_object,
)
from llmserve.api.openapi import GENERATION_ERRORS, error_responses, ndjson
from llmserve.api.sse import EventStream, framed_events
from llmserve.services.embeddings import EmbeddingAnswer
from llmserve.services.policy import visible_to

router = APIRouter(tags=["ollama"])

GENERATE_ROUTE = "/api/generate"
CHAT_ROUTE = "/api/chat"
EMBED_ROUTE = "/api/embed"
EMBEDDINGS_ROUTE = "/api/embeddings"

_JSON = "application/json; charset=utf-8"
_ERRORS = error_responses(*GENERATION_ERRORS, face="ollama")
_STREAM_DOC = {
    200: ndjson(
        "NDJSON lines (`application/x-ndjson`) by default; one object with `stream: false`."
    ),
    **_ERRORS,
}


@router.post(
    "/api/generate", openapi_extra=openapi_body(OllamaGenerateRequest), responses=_STREAM_DOC
)
async def generate(request: Request) -> Response:
    """Ollama's `/api/generate`: complete `prompt` (with `system`, `suffix`, `raw`, `images`,
    `format`, `options`, `keep_alive`, `think`)."""
    body = parse_body(await request.body(), OllamaGenerateRequest)
    if not body.model:
        raise errors.ModelNotFoundError("model '' not found")
    return await _answer(request, body, "generate", GENERATE_ROUTE)


@router.post("/api/chat", openapi_extra=openapi_body(OllamaChatRequest), responses=_STREAM_DOC)
async def chat(request: Request) -> Response:
    """Ollama's `/api/chat`: answer `messages` (with `tools`, `images`, `format`, `options`,
    `keep_alive`, `think`)."""
    body = parse_body(await request.body(), OllamaChatRequest)
    if not body.model:
        raise errors.InvalidRequestError("model is required")
    return await _answer(request, body, "chat", CHAT_ROUTE)


async def _answer(
    request: Request,
    body: OllamaGenerateRequest | OllamaChatRequest,
    endpoint: Endpoint,
    route: str,
) -> Response:
    runtime = runtime_of(request)
    runtime.models.validate(body.model)
    if body.loads_only:  # no generation, but the key's models still hold
        if not visible_to(key_in(request.scope), body.model):
            raise errors.ModelNotAllowedError(f"this API key may not use model '{body.model}'")
        with as_ollama(not_found=f"model '{body.model}' not found"):
            await runtime.models.load(body.model, body.keep_alive)
        reason: Literal["load", "unload"] = "unload" if body.unloads else "load"
        return Response(load_object(body.model, endpoint, reason), media_type=_JSON)
    domain = body.to_domain(runtime.settings.MAX_IMAGE_BYTES)
    with as_ollama(not_found=f"model '{body.model}' not found"):
        generation = await run_generation(
            request.scope,
            request.receive,
            domain,
            route=route,
            stream=body.stream,
            model=body.model,
        )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if not body.stream:
        return Response(
            orjson.dumps(whole_object(generation, body.model, endpoint)), media_type=_JSON
        )
    lines = OllamaLines(generation, body.model, endpoint)
    return EventStream(
        framed_events(generation, encode=lines.encode, tail=lines.tail, error=error_line),
        ping_interval=None,
        framing=NDJSON_HEADERS,
        shutdown=SHUTDOWN_LINE,
    )


@router.post("/api/embed", openapi_extra=openapi_body(OllamaEmbedRequest), responses=_ERRORS)
async def embed(request: Request) -> Response:
    """Ollama's `/api/embed`: unit vectors for `input` (a text or a list of texts)."""
    body = parse_body(await request.body(), OllamaEmbedRequest)
    if not body.model:
        raise errors.ModelNotFoundError("model '' not found")
    fields = _given(body, "truncate", "keep_alive", "options")
    started = time.perf_counter()
    with as_ollama(not_found=f"model '{body.model}' not found"):
        answer = await _embed(
            request, body.model, body.inputs, EMBED_ROUTE, fields, body.dimensions
        )
    native = answer.embeddings.native
    out: dict[str, Any] = {
        "model": body.model,
        "embeddings": answer.embeddings.vectors,
        # llmserve's whole time; the engine's own load time when it reports one (Ollama).
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": int(native.get("load_duration") or 0),
        "prompt_eval_count": answer.embeddings.prompt_tokens,
    }
    return Response(orjson.dumps(out), media_type=_JSON)


@router.post(
    "/api/embeddings", openapi_extra=openapi_body(OllamaEmbeddingsRequest), responses=_ERRORS
)
async def embeddings(request: Request) -> Response:
    """Ollama's legacy `/api/embeddings`: one vector for `prompt`."""
    body = parse_body(await request.body(), OllamaEmbeddingsRequest)
    if not body.model:
        raise errors.InvalidRequestError("model is required")
    runtime_of(request).models.validate(body.model)  # a name is checked first, always
    if not body.prompt:
        return Response(b'{"embedding":[]}', media_type=_JSON)
    fields = _given(body, "keep_alive", "options")
    with as_ollama(not_found=f'model "{body.model}" not found, try pulling it first'):
        answer = await _embed(request, body.model, [body.prompt], EMBEDDINGS_ROUTE, fields, None)
    return Response(orjson.dumps({"embedding": answer.embeddings.vectors[0]}), media_type=_JSON)


def _given(body: BaseModel, *names: str) -> dict[str, Any]:
    """The fields among ``names`` the client sent (to pass to Ollama as they came)."""
    return {name: getattr(body, name) for name in names if getattr(body, name) is not None}


async def _embed(
    request: Request,
    model: str,
    inputs: list[str],
    route: str,
    fields: dict[str, Any],
    dimensions: int | None,
) -> EmbeddingAnswer:
    runtime = runtime_of(request)
    runtime.models.validate(model)
    return await runtime.embeddings.embed(
        inputs,
        route=route,
        model=model,
        dimensions=dimensions,
        key=key_in(request.scope),
        ollama=fields or None,
    )
