"""The one route helper every generation route uses (native, OpenAI, and the faces to come).

A route parses its wire request into a :class:`~llmserve.domain.GenerationRequest`, calls
:func:`run_generation`, and renders what it gets back: an open :class:`Generation` to stream, a
finished one to answer whole, or ``None`` when the client left before the answer started (the
row says ``cancelled``; the route answers 499, which nobody reads). The API key, the disconnect
watch and the service call live here once.
"""

from __future__ import annotations

from starlette.types import Receive, Scope

from llmserve.api.disconnect import ClientDisconnected, cancel_on_disconnect
from llmserve.domain import GenerationRequest
from llmserve.runtime import Runtime
from llmserve.services.generation import Generation
from llmserve.services.keys import Principal


def runtime_in(scope: Scope) -> Runtime:
    runtime: Runtime = scope["app"].state.runtime  # set by the app's lifespan
    return runtime


def key_in(scope: Scope) -> Principal | None:
    """The request's API key (None when AUTH_REQUIRED=false): whose limits apply."""
    principal: Principal | None = scope.get("state", {}).get("principal")  # set by AuthMiddleware
    return principal


async def run_generation(
    scope: Scope,
    receive: Receive,
    request: GenerationRequest,
    *,
    route: str,
    stream: bool,
    model: str | None = None,
) -> Generation | None:
    """Open (``stream``) or run to its end (not ``stream``) one generation under the client's
    key, cancelled if the client disconnects first. ``model``: the name the client asked for
    (None: the active model). Errors before the first byte raise ``LlmserveError``."""
    runtime = runtime_in(scope)
    work = runtime.generation.generate(
        request, route=route, model=model, key=key_in(scope), whole=not stream
    )
    try:
        return await cancel_on_disconnect(receive, work)
    except ClientDisconnected:
        return None
