"""Model management routes: list, active, pull, delete, switch."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.exceptions import HTTPException

from llmserve import errors
from llmserve.api.auth import AdminOnly, PrincipalDep
from llmserve.api.deps import ActorDep, ModelsDep
from llmserve.api.disconnect import ClientDisconnected, cancel_on_disconnect
from llmserve.api.openapi import ADMIN_ERRORS, BACKEND_ERRORS, error_responses, event_stream
from llmserve.api.schemas import (
    MODEL_NAME_SCHEMA,
    ActiveModelResponse,
    MessageResponse,
    ModelItem,
    ModelListResponse,
    PullRequest,
    PullStatus,
)
from llmserve.api.sse import EventStream, data_event, error_event
from llmserve.domain import PullProgress
from llmserve.services.policy import visible_to

router = APIRouter(prefix="/api/v1/models", tags=["models"])
_SERVER_DOC = "Only this backend server (its base URL as configured); every server when absent."


#: ``{name}``: an Ollama model name, with ``/`` and ``:`` (``hf.co/org/repo:Q4_K_M``).
NamePath = Annotated[str, Path(description="A model name.", json_schema_extra=MODEL_NAME_SCHEMA)]
#: ``DELETE /api/v1/models/{name}`` matches the other routes' paths too; those paths are
#: theirs (``DELETE /api/v1/models/active`` is a 405, as ``Allow`` says), so these names are
#: deleted by their long form (``active:latest``).
_SIBLING_PATHS = r"^(active|pull|switch/.*)$"
DeletedName = Annotated[
    str,
    Path(
        description="A model name (not `active`, `pull` or `switch/…`: those paths are the "
        "other routes'; use `active:latest`…).",
        json_schema_extra={**MODEL_NAME_SCHEMA, "not": {"pattern": _SIBLING_PATHS}},
    ),
]
_ADMIN = error_responses(*ADMIN_ERRORS, face="native")
#: A switch is followed by the active model (the stateful tests follow the link).
_ACTIVE_LINK = {"ActiveModel": {"operationRef": "#/paths/~1api~1v1~1models~1active/get"}}


@router.get(
    "", response_model=ModelListResponse, responses=error_responses(*BACKEND_ERRORS, face="native")
)
async def list_models(models: ModelsDep, key: PrincipalDep) -> ModelListResponse:
    """Installed models (those the API key may use), with the active and the built-in one
    marked."""
    entries = [e for e in await models.list() if visible_to(key, e.info.name)]
    return ModelListResponse(
        models=[
            ModelItem(
                model=e.info.name,
                name=e.info.name,
                size=e.info.size,
                modified_at=e.info.modified_at.isoformat() if e.info.modified_at else None,
                digest=e.info.digest,
                active=e.active,
                built_in=e.built_in,
                backends=list(e.info.backends),
            )
            for e in entries
        ],
        active=models.active,
    )


@router.get("/active", response_model=ActiveModelResponse)
async def active_model(models: ModelsDep) -> ActiveModelResponse:
    """The model every generation uses."""
    return ActiveModelResponse(model=models.active)


@router.post(
    "/pull",
    dependencies=[AdminOnly],
    response_model=PullStatus,
    responses={
        200: {
            **event_stream(
                '`{"status": "success"}`, or progress events with `stream=true`.',
                ["message", "error"],
            ),
            "links": {
                "DeleteModel": {
                    "operationRef": "#/paths/~1api~1v1~1models~1{name}/delete",
                    "parameters": {"name": "$request.body#/name"},
                }
            },
        },
        **_ADMIN,
    },
)
async def pull_model(
    body: PullRequest,
    request: Request,
    models: ModelsDep,
    actor: ActorDep,
    stream: bool = Query(False, description="Stream progress as Server-Sent Events."),
    server: str | None = Query(None, description=_SERVER_DOC),
) -> Response:
    """Install a model; Ollama's progress objects are streamed with `stream=true`."""
    models.validate(body.name)
    progress = models.pull(body.name, actor=actor, server=server)
    if stream:
        first = await _first_progress(request, progress)
        if first is None:
            return Response(status_code=499)
        return EventStream(
            _pull_events(first, progress),
            ping_interval=request.app.state.runtime.settings.SSE_PING_INTERVAL_S,
        )
    try:
        await cancel_on_disconnect(request, _drain(progress))
    except ClientDisconnected:
        return Response(status_code=499)
    return Response(PullStatus(status="success").model_dump_json(), media_type="application/json")


@router.delete(
    "/{name:path}",
    dependencies=[AdminOnly],
    response_model=MessageResponse,
    responses=error_responses(*ADMIN_ERRORS, errors.MethodNotAllowedError, face="native"),
)
async def delete_model(
    name: DeletedName,
    models: ModelsDep,
    actor: ActorDep,
    server: str | None = Query(None, description=_SERVER_DOC),
) -> MessageResponse:
    """Remove an installed model. Never the built-in one (403), nor the active one (409)."""
    if re.match(_SIBLING_PATHS, name):
        raise HTTPException(405)  # answered with the Allow of the route the path belongs to
    await models.delete(name, actor=actor, server=server)
    return MessageResponse(message=f"Deleted model {name}")


@router.post(
    "/switch/{name:path}",
    dependencies=[AdminOnly],
    response_model=MessageResponse,
    responses={200: {"description": "Switched.", "links": _ACTIVE_LINK}, **_ADMIN},
)
async def switch_model(name: NamePath, models: ModelsDep, actor: ActorDep) -> MessageResponse:
    """Make an installed model the active one, for every replica."""
    await models.switch(name, actor=actor)
    return MessageResponse(message=f"Switched active model to {name}")


async def _drain(progress: AsyncIterator[PullProgress]) -> None:
    try:
        async for item in progress:
            if item.status == "success":
                return
    finally:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator


async def _first_progress(
    request: Request, progress: AsyncIterator[PullProgress]
) -> PullProgress | None:
    """The first progress item, so that errors before it still get a real status."""
    try:
        return await cancel_on_disconnect(request, anext(progress))
    except ClientDisconnected:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator
        return None
    except BaseException:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator
        raise


async def _pull_events(
    first: PullProgress, progress: AsyncIterator[PullProgress]
) -> AsyncIterator[bytes]:
    try:
        yield data_event(_wire(first))
        async for item in progress:
            yield data_event(_wire(item))
    except errors.LlmserveError as exc:
        yield error_event(exc)
    finally:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator


def _wire(item: PullProgress) -> dict[str, object]:
    out: dict[str, object] = {"status": item.status}
    for key in ("digest", "total", "completed"):
        value = getattr(item, key)
        if value is not None:
            out[key] = value
    return out
