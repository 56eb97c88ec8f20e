"""The OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``.

The same generation service as ``/api/v1/generate`` (same admission control, cancellation and
request-log rows, under these route names), in OpenAI's wire format (``api/openai_wire.py``).
Unlike the native route, ``model`` chooses the model: the active one or any installed one.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from llmserve import errors
from llmserve.api.auth import PrincipalDep
from llmserve.api.deps import ModelsDep, runtime_of
from llmserve.api.generating import key_in, run_generation
from llmserve.api.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionParams,
    CompletionRequest,
    EmbeddingList,
    EmbeddingObject,
    EmbeddingRequest,
    EmbeddingUsage,
    ModelList,
    ModelObject,
)
from llmserve.api.openai_wire import (
    ChatChunks,
    ChunkEncoder,
    CompletionChunks,
    OpenAIRoute,
    chat_completion,
    error_event,
    openai_events,
    text_completion,
)
from llmserve.api.openapi import BACKEND_ERRORS, GENERATION_ERRORS, error_responses, event_stream
from llmserve.api.sse import EventStream
from llmserve.domain import GenerationRequest, ModelInfo
from llmserve.services.generation import Generation
from llmserve.services.models import find_installed
from llmserve.services.policy import visible_to

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


_GENERATION_ERRORS = error_responses(*GENERATION_ERRORS, face="openai")
_BACKEND_ERRORS = error_responses(*BACKEND_ERRORS, face="openai")
#: Chunks (``data: {…}``) ending with ``data: [DONE]``; an ``error`` event after the first byte.
_stream_doc = event_stream(
    "The whole completion, or Server-Sent Events with `stream: true`.", ["message", "error"]
)


def _model_object(info: ModelInfo) -> ModelObject:
    created = int(info.modified_at.timestamp()) if info.modified_at else 0
    return ModelObject(id=info.name, created=created, backends=list(info.backends))


@router.get("/models", response_model=ModelList, responses=_BACKEND_ERRORS)
async def list_models(models: ModelsDep, key: PrincipalDep) -> ModelList:
    """Installed models (those the API key may use)."""
    entries = await models.list()
    return ModelList(data=[_model_object(e.info) for e in entries if visible_to(key, e.info.name)])


@router.get(
    "/models/{model:path}",
    response_model=ModelObject,
    responses=error_responses(errors.ModelNotFoundError, *BACKEND_ERRORS, face="openai"),
)
async def retrieve_model(model: str, models: ModelsDep, key: PrincipalDep) -> ModelObject:
    """One installed model (`llama3.2` finds `llama3.2:latest`)."""
    found = find_installed(model, [entry.info for entry in await models.list()])
    if found is None or not visible_to(key, found.name):
        raise errors.ModelNotFoundError(f"model '{model}' is not installed")
    return _model_object(found)


@dataclass(frozen=True, slots=True)
class _Face:
    """How one generation route speaks: its log name, its chunks and its whole response."""

    route: str
    chunks: type[ChunkEncoder]
    whole: Callable[[Generation], BaseModel]


CHAT = _Face("/v1/chat/completions", ChatChunks, chat_completion)
COMPLETIONS = _Face("/v1/completions", CompletionChunks, text_completion)
EMBEDDINGS = "/v1/embeddings"
#: The last event of an OpenAI stream cut at the end of the shutdown grace period.
SHUTDOWN_EVENT = error_event(errors.ShuttingDownError())


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: _stream_doc, **_GENERATION_ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """A chat completion: the conversation, tools and response format, in the model's own
    chat form."""
    domain = body.to_domain(runtime_of(request).settings.MAX_IMAGE_BYTES)
    return await _generate(CHAT, body, domain, request)


@router.post(
    "/completions", response_model=Completion, responses={200: _stream_doc, **_GENERATION_ERRORS}
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """A text completion of `prompt` (a single string)."""
    domain = GenerationRequest.from_prompt(body.prompt, options=body.options())
    return await _generate(COMPLETIONS, body, domain, request)


async def _generate(
    face: _Face,
    body: CompletionParams,
    domain: GenerationRequest,
    request: Request,
) -> Response:
    generation = await run_generation(
        request.scope,
        request.receive,
        domain,
        route=face.route,
        stream=body.stream,
        model=body.model,
    )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if body.stream:
        chunks = face.chunks.for_generation(generation, include_usage=body.include_usage)
        return EventStream(
            openai_events(generation, chunks),
            ping_interval=runtime_of(request).settings.SSE_PING_INTERVAL_S,
            shutdown=SHUTDOWN_EVENT,
        )
    return Response(face.whole(generation).model_dump_json(), media_type="application/json")


@router.post("/embeddings", response_model=EmbeddingList, responses=_GENERATION_ERRORS)
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList:
    """Embedding vectors for a text or a list of texts (`float`, or `base64` of float32)."""
    answer = await runtime_of(request).embeddings.embed(
        body.inputs,
        route=EMBEDDINGS,
        model=body.model,
        dimensions=body.dimensions,
        key=key_in(request.scope),
    )
    vectors = answer.embeddings.vectors
    data = [
        EmbeddingObject(
            index=index,
            embedding=vector if body.encoding_format == "float" else _base64_floats(vector),
        )
        for index, vector in enumerate(vectors)
    ]
    tokens = answer.embeddings.prompt_tokens
    return EmbeddingList(
        data=data,
        model=answer.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's ``base64`` encoding: the float32 little-endian bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
