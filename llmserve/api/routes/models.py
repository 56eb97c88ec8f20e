"""Model management routes: list, active, pull, delete, switch."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request, Response

from llmserve import errors
from llmserve.api.auth import AdminOnly, PrincipalDep
from llmserve.api.deps import ActorDep, ModelsDep
from llmserve.api.disconnect import ClientDisconnected, cancel_on_disconnect
from llmserve.api.schemas import (
    ActiveModelResponse,
    ErrorResponse,
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


def _errors(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {status: {"model": ErrorResponse} for status in statuses}


@router.get("", response_model=ModelListResponse, responses=_errors(502, 503))
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
            "description": '`{"status": "success"}`, or progress events with `stream=true`.',
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_errors(400, 401, 403, 404, 501, 502, 503),
    },
)
async def pull_model(
    body: PullRequest,
    request: Request,
    models: ModelsDep,
    actor: ActorDep,
    stream: bool = Query(False, description="Stream progress as Server-Sent Events."),
) -> Response:
    """Install a model; Ollama's progress objects are streamed with `stream=true`."""
    models.validate(body.name)
    progress = models.pull(body.name, actor=actor)
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
    responses=_errors(400, 401, 403, 404, 409),
)
async def delete_model(name: str, models: ModelsDep, actor: ActorDep) -> MessageResponse:
    """Remove an installed model. Never the built-in one (403), nor the active one (409)."""
    await models.delete(name, actor=actor)
    return MessageResponse(message=f"Deleted model {name}")


@router.post(
    "/switch/{name:path}",
    dependencies=[AdminOnly],
    response_model=MessageResponse,
    responses=_errors(400, 401, 403, 404),
)
async def switch_model(name: str, models: ModelsDep, actor: ActorDep) -> MessageResponse:
    """Make an installed model the active one, for every replica."""
    await models.switch(name, actor=actor)
    return MessageResponse(message=f"Switched active model to {name}")


async def _drain(progress: AsyncIterator[PullProgress]) -> None:
    try:
        async for item in progress:
            if item.status == "success":
                return
    finally:
        await progress.aclose()  # type: ignore[attr-defined]


async def _first_progress(
    request: Request, progress: AsyncIterator[PullProgress]
) -> PullProgress | None:
    """The first progress item, so that errors before it still get a real status."""
    try:
        return await cancel_on_disconnect(request, anext(progress))
    except ClientDisconnected:
        await progress.aclose()  # type: ignore[attr-defined]
        return None
    except BaseException:
        await progress.aclose()  # type: ignore[attr-defined]
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
        await progress.aclose()  # type: ignore[attr-defined]


def _wire(item: PullProgress) -> dict[str, object]:
    out: dict[str, object] = {"status": item.status}
    for key in ("digest", "total", "completed"):
        value = getattr(item, key)
        if value is not None:
            out[key] = value
    return out
