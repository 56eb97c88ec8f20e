"""``POST /api/v1/chat`` and ``POST /api/v1/embed``: conversations and embeddings, native API.

Same strictness as generate (unknown fields 422), the active model, and the same generation
entry point; the stream is generate's SSE (``data: {"response"}`` per text delta, then
``data: {"tool_calls": [...]}`` when the answer holds calls, then ``data: {}``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmserve.api.deps import runtime_of
from llmserve.api.generating import key_in, run_generation
from llmserve.api.openapi import GENERATION_ERRORS, error_responses
from llmserve.api.routes.generate import generation_responses, whole_answer
from llmserve.api.schemas import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    native_tool_calls,
)
from llmserve.api.sse import EventStream, generation_events

router = APIRouter(prefix="/api/v1", tags=["generate"])

CHAT_ROUTE = "/api/v1/chat"
EMBED_ROUTE = "/api/v1/embed"


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses=generation_responses("The answer"),
)
async def chat(body: ChatRequest, request: Request) -> Response:
    """Answer a conversation with the active model (tools, images, `format`)."""
    runtime = runtime_of(request)
    domain = body.to_domain(runtime.settings.MAX_IMAGE_BYTES)
    generation = await run_generation(
        request.scope, request.receive, domain, route=CHAT_ROUTE, stream=body.stream
    )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if body.stream:
        return EventStream(
            generation_events(generation), ping_interval=runtime.settings.SSE_PING_INTERVAL_S
        )
    result = generation.result
    assert result is not None
    message: dict[str, object] = {"role": "assistant", "content": generation.text}
    if result.tool_calls:
        message["tool_calls"] = native_tool_calls(result.tool_calls)
    return whole_answer(generation, "message", message)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=error_responses(*GENERATION_ERRORS, face="native"),
)
async def embed(body: EmbedRequest, request: Request) -> EmbedResponse:
    """Embedding vectors for a text or a list of texts (`EMBEDDING_MODEL`, else the active
    model)."""
    answer = await runtime_of(request).embeddings.embed(
        body.inputs, route=EMBED_ROUTE, key=key_in(request.scope)
    )
    return EmbedResponse(
        embeddings=answer.embeddings.vectors,
        model=answer.model,
        usage={"prompt_tokens": answer.embeddings.prompt_tokens},
    )
