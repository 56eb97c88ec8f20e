"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A thin face over the one generation entry point (admission, policy, timeouts, cancellation,
request log and metrics, under these route names): parse (``api/anthropic_schemas.py``), call,
render (``api/anthropic_wire.py``). The request names its model, as on the OpenAI routes.
Authentication is ``x-api-key`` or a Bearer token; ``anthropic-version`` is accepted, not
required.

``count_tokens`` asks the backend's own tokenizer: it evaluates the conversation through the same
entry point with one token to generate, and answers the prompt's token count the engine reports
(the embedded engine's, Ollama's prompt evaluation, an OpenAI-compatible engine's usage); an
engine that reports none is a 400 ``unsupported``, never a guess.
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request, Response

from llmserve import errors
from llmserve.api.anthropic_schemas import (
    CountTokensRequest,
    ErrorEnvelope,
    MessageObject,
    MessagesRequest,
    TokenCount,
)
from llmserve.api.anthropic_wire import (
    PING,
    SHUTDOWN_EVENT,
    AnthropicRoute,
    message_events,
    whole_message,
)
from llmserve.api.deps import runtime_of
from llmserve.api.generating import run_generation
from llmserve.api.openapi import event_stream
from llmserve.api.sse import EventStream
from llmserve.domain import AUTO, GenerationOptions

router = APIRouter(prefix="/v1", tags=["anthropic"], route_class=AnthropicRoute)

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorEnvelope}
    for status in (400, 401, 403, 404, 413, 429, 500, 502, 503, 504, 529)
}
_STREAM_DOC = event_stream(
    "The whole message, or Server-Sent Events with `stream: true`.",
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ],
)


@router.post("/messages", response_model=MessageObject, responses={200: _STREAM_DOC, **_ERRORS})
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """A message: the conversation, tools and output format, answered by the named model."""
    runtime = runtime_of(request)
    domain = body.to_domain(runtime.settings.MAX_IMAGE_BYTES, body.options())
    generation = await run_generation(
        request.scope, request.receive, domain, route=MESSAGES, stream=body.stream, model=body.model
    )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if body.stream:
        return EventStream(
            message_events(generation),
            ping_interval=runtime.settings.SSE_PING_INTERVAL_S,
            shutdown=SHUTDOWN_EVENT,
            ping=PING,
        )
    return Response(whole_message(generation).model_dump_json(), media_type="application/json")


@router.post("/messages/count_tokens", response_model=TokenCount, responses=_ERRORS)
async def count_tokens(body: CountTokensRequest, request: Request) -> Response:
    """The conversation's input tokens, from the backend's own tokenizer."""
    runtime = runtime_of(request)
    domain = body.to_domain(runtime.settings.MAX_IMAGE_BYTES, GenerationOptions(max_tokens=1))
    # The prompt is what is counted: no forced call or format to constrain one token by.
    if domain.tool_choice.mode != "none":
        domain = dataclasses.replace(domain, tool_choice=AUTO)
    domain = dataclasses.replace(domain, response_format=None)
    generation = await run_generation(
        request.scope, request.receive, domain, route=COUNT_TOKENS, stream=False, model=body.model
    )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    tokens = generation.result.usage.prompt_tokens if generation.result is not None else 0
    if not tokens:
        raise errors.UnsupportedError(
            f"the backend reports no token count for model '{generation.model}'"
        )
    return Response(
        TokenCount(input_tokens=tokens).model_dump_json(), media_type="application/json"
    )
