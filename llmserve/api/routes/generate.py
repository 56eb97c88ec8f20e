"""``POST /api/v1/generate`` (SPEC §3)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmserve.api.auth import principal_of
from llmserve.api.deps import runtime_of
from llmserve.api.disconnect import ClientDisconnected, cancel_on_disconnect
from llmserve.api.schemas import ErrorResponse, GenerateRequest, GenerateResponse, Usage
from llmserve.api.sse import EventStream, generation_events

router = APIRouter(prefix="/api/v1", tags=["generate"])

ROUTE = "/api/v1/generate"
_errors = {status: {"model": ErrorResponse} for status in (401, 404, 413, 429, 502, 503, 504)}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        200: {
            "description": "The whole text, or Server-Sent Events with `stream: true`.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'data: {"response": "Hello"}\n\ndata: {}\n\n',
                }
            },
        },
        **_errors,
    },
)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Generate text with the active model; `stream: true` answers with Server-Sent Events."""
    runtime = runtime_of(request)
    service = runtime.generation
    principal = principal_of(request)
    domain = body.to_domain()
    service.check(domain)
    key_id = principal.key_id if principal is not None else None
    try:
        if body.stream:
            generation = await cancel_on_disconnect(
                request, service.start(domain, route=ROUTE, api_key_id=key_id)
            )
        else:
            text, generation = await cancel_on_disconnect(
                request, service.complete(domain, route=ROUTE, api_key_id=key_id)
            )
    except ClientDisconnected:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if body.stream:
        return EventStream(
            generation_events(generation),
            ping_interval=runtime.settings.SSE_PING_INTERVAL_S,
        )
    result = generation.result
    assert result is not None
    payload = GenerateResponse(
        response=text,
        model=generation.model,
        done_reason=result.done_reason,
        usage=Usage(
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
        ),
    )
    return Response(payload.model_dump_json(), media_type="application/json")
