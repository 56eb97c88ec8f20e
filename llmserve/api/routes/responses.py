"""OpenAI's Responses API: ``POST /v1/responses``, stateless.

A thin face over the one generation entry point (admission, policy, timeouts, cancellation,
request log and metrics, under this route's name): parse (``api/responses_schemas.py``), call,
render (``api/responses_wire.py``). The request names its model, as on ``/v1/chat/completions``;
refusals use OpenAI's error envelope.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from llmserve.api.deps import runtime_of
from llmserve.api.generating import run_generation
from llmserve.api.openai_schemas import ErrorEnvelope
from llmserve.api.openai_wire import OpenAIRoute
from llmserve.api.openapi import event_stream
from llmserve.api.responses_schemas import ResponseObject, ResponsesRequest
from llmserve.api.responses_wire import SHUTDOWN_EVENT, echo, response_events, whole_response
from llmserve.api.sse import EventStream

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

RESPONSES = "/v1/responses"

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorEnvelope} for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}
#: Events named by their ``type`` (``response.created`` … ``response.completed``, ``error``).
_STREAM_DOC = event_stream("The whole response, or Server-Sent Events with `stream: true`.")


@router.post("/responses", response_model=ResponseObject, responses={200: _STREAM_DOC, **_ERRORS})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """A response to `input` (messages, function calls and their outputs), with tools and a
    text format; nothing is stored."""
    runtime = runtime_of(request)
    domain = body.to_domain(runtime.settings.MAX_IMAGE_BYTES)
    generation = await run_generation(
        request.scope,
        request.receive,
        domain,
        route=RESPONSES,
        stream=body.stream,
        model=body.model,
    )
    if generation is None:
        return Response(status_code=499)  # nobody reads it; the row says "cancelled"
    if body.stream:
        return EventStream(
            response_events(generation, echo(body)),
            ping_interval=runtime.settings.SSE_PING_INTERVAL_S,
            shutdown=SHUTDOWN_EVENT,
        )
    answer = whole_response(generation, echo(body))
    return Response(orjson.dumps(answer), media_type="application/json")
