"""Ollama's model and admin API: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``,
``/api/show``, and, for admin keys, ``/api/pull``, ``/api/delete``, ``/api/copy``,
``/api/create``, in Ollama's own wire format.

A thin face over the model service (``services/models.py``), which keeps the rules every face
shares: names checked before any backend call, the built-in model never deleted nor written
over, the active one not deleted, an audit row for every change. Bodies are read the way
Ollama reads them (``api/ollama_schemas.parse_body``); refusals carry Ollama's own texts where
Ollama has one (``model 'x' not found``, copy's ``model "x" not found``, ``model is
required``). Progress (pull, create) is NDJSON, or with ``stream: false`` the last object
alone; an error after the first line is a last line ``{"error": "…"}``.

On the Ollama backend ``/api/ps`` and ``/api/show`` pass Ollama's own answers through; the
other backends answer what they know (``backends/*.show``), written as Ollama writes it
(``api/ollama_models_wire.py``). ``/api/version`` is Ollama's own version, or for the other
engines :data:`OLLAMA_API_VERSION`.

Where llmserve still differs from Ollama, on purpose: a failure's status is llmserve's (a pull
of a model the registry lacks is 404 with ``stream: false``, Ollama says 500; a backend that
cannot copy or create says 501), and the text of a failed pull is llmserve's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from llmserve import errors
from llmserve.api.auth import AdminOnly, PrincipalDep
from llmserve.api.deps import ActorDep, ModelsDep
from llmserve.api.disconnect import ClientDisconnected, cancel_on_disconnect
from llmserve.api.ollama_models_wire import (
    json_response,
    newest_first,
    progress_object,
    ps_item,
    show_object,
    tags_item,
)
from llmserve.api.ollama_schemas import parse_body, requires
from llmserve.api.ollama_wire import (
    NDJSON_HEADERS,
    SHUTDOWN_LINE,
    as_ollama,
    error_line,
    line,
    openapi_body,
)
from llmserve.api.openapi import ADMIN_ERRORS, BACKEND_ERRORS, error_responses, ndjson
from llmserve.api.schemas import MODEL_NAME_SCHEMA
from llmserve.api.sse import EventStream
from llmserve.domain import PullProgress
from llmserve.services.policy import visible_to

log = logging.getLogger(__name__)

router = APIRouter(tags=["ollama"])

#: What ``/api/version`` says when the engine is not Ollama: the newest Ollama release whose
#: API (its docs and source) llmserve's Ollama face was written against. Clients compare it
#: to decide which features to use (``format`` schemas, ``think``, tools).
OLLAMA_API_VERSION = "0.32.15"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


_NAME: dict[str, Any] = {"type": "string", **MODEL_NAME_SCHEMA}
_EMPTY: dict[str, Any] = {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}]}
#: JSON Schema: ``model`` names a model, or is empty and the deprecated ``name`` does.
_NAMES_A_MODEL: dict[str, Any] = {
    "anyOf": [
        {"required": ["model"], "properties": {"model": _NAME}},
        {"required": ["name"], "properties": {"model": _EMPTY, "name": _NAME}},
    ]
}


class OllamaModelRequest(_Lenient):
    """A body that names a model: ``model``, or the deprecated ``name``."""

    model_config = ConfigDict(json_schema_extra=_NAMES_A_MODEL)

    model: StrictStr | None = None
    name: StrictStr | None = None

    @property
    def target(self) -> str:
        return self.model or self.name or ""


class OllamaShowRequest(OllamaModelRequest):
    verbose: StrictBool | None = None


class OllamaPullRequest(OllamaModelRequest):
    stream: StrictBool | None = None


class OllamaCopyRequest(_Lenient):
    model_config = ConfigDict(json_schema_extra=requires("source", "destination"))

    source: StrictStr = Field("", json_schema_extra=MODEL_NAME_SCHEMA)
    destination: StrictStr = Field("", json_schema_extra=MODEL_NAME_SCHEMA)


def _create_schema(schema: dict[str, Any]) -> None:
    """A model to create, from an installed or pullable model (``from``). Ollama's other way,
    from uploaded blobs (``files``), needs ``/api/blobs``, which llmserve does not serve."""
    schema["properties"]["files"] = {
        "not": {},
        "description": "Not supported: llmserve does not take blob uploads (`/api/blobs`).",
    }
    schema["allOf"] = [_NAMES_A_MODEL, {"required": ["from"], "properties": {"from": _NAME}}]


class OllamaCreateRequest(OllamaModelRequest):
    """Only what llmserve reads; the whole body goes to the backend as it came."""

    model_config = ConfigDict(json_schema_extra=_create_schema)

    stream: StrictBool | None = None
    base: StrictStr | None = Field(None, alias="from", json_schema_extra={"anyOf": [_EMPTY, _NAME]})


_ADMIN = error_responses(*ADMIN_ERRORS, face="ollama")
_BACKEND = error_responses(*BACKEND_ERRORS, face="ollama")
_PROGRESS_DOC: dict[int | str, dict[str, Any]] = {
    200: ndjson(
        "NDJSON progress lines (`application/x-ndjson`) ending with "
        '`{"status": "success"}`; the last object alone with `stream: false`.'
    ),
    **_ADMIN,
}


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> PlainTextResponse:
    """Liveness, as Ollama answers it (no key needed)."""
    return PlainTextResponse("Ollama is running")


@router.get("/api/version", responses=_BACKEND)
@router.head("/api/version", responses=_BACKEND)
async def version(models: ModelsDep) -> Response:
    """The Ollama version behind llmserve, or the one whose API llmserve implements."""
    return json_response({"version": await models.ollama_version() or OLLAMA_API_VERSION})


@router.get("/api/tags", responses=_BACKEND)
@router.head("/api/tags", responses=_BACKEND)
async def tags(models: ModelsDep, key: PrincipalDep) -> Response:
    """Installed models (those the API key may use), newest first."""
    infos = sorted(
        (e.info for e in await models.list() if visible_to(key, e.info.name)), key=newest_first
    )
    # llmserve's addition: where each model lives (the backend servers' base URLs)
    items = [{**tags_item(info), "backends": list(info.backends)} for info in infos]
    return json_response({"models": items})


@router.get("/api/ps", responses=_BACKEND)
async def ps(models: ModelsDep, key: PrincipalDep) -> Response:
    """The models loaded in memory (those the API key may use; ``[]`` where the engine cannot
    tell)."""
    running = [m for m in await models.running() if visible_to(key, m.name)]
    return json_response({"models": [ps_item(model) for model in running]})


@router.post(
    "/api/show",
    openapi_extra=openapi_body(OllamaShowRequest),
    responses=error_responses(
        errors.InvalidRequestError,
        errors.InvalidModelNameError,
        errors.ModelNotFoundError,
        *BACKEND_ERRORS,
        face="ollama",
    ),
)
async def show(request: Request, models: ModelsDep, key: PrincipalDep) -> Response:
    """What is known of an installed model: details, capabilities, template, GGUF metadata."""
    body = parse_body(await request.body(), OllamaShowRequest)
    name = body.target
    if not name:
        raise errors.InvalidRequestError("model is required")
    if not visible_to(key, name):  # outside the key's models: as if not installed
        raise errors.ModelNotFoundError(f"model '{name}' not found")
    with as_ollama(invalid="invalid model name", not_found=f"model '{name}' not found"):
        card = await models.show(name, verbose=bool(body.verbose))
    return json_response(show_object(card))


@router.post(
    "/api/pull",
    dependencies=[AdminOnly],
    openapi_extra=openapi_body(OllamaPullRequest),
    responses=_PROGRESS_DOC,
)
async def pull(request: Request, models: ModelsDep, actor: ActorDep) -> Response:
    """Install a model; progress as NDJSON unless `stream` is false."""
    body = parse_body(await request.body(), OllamaPullRequest)
    with as_ollama(invalid="invalid model name"):
        name = models.validate(body.target)
    server = request.query_params.get("server")  # one backend server (llmserve's addition)
    progress = models.pull(name, actor=actor, server=server)
    return await _progress(request, progress, body.stream is not False)


@router.delete(
    "/api/delete",
    dependencies=[AdminOnly],
    response_class=Response,
    openapi_extra=openapi_body(OllamaModelRequest),
    responses=_ADMIN,
)
async def delete(request: Request, models: ModelsDep, actor: ActorDep) -> Response:
    """Remove an installed model: never the built-in one (403), nor the active one (409)."""
    body = parse_body(await request.body(), OllamaModelRequest)
    name = body.target
    if not name:
        raise errors.InvalidRequestError("model is required")
    with as_ollama(invalid=f'name "{name}" is invalid', not_found=f"model '{name}' not found"):
        await models.delete(name, actor=actor, server=request.query_params.get("server"))
    return Response(status_code=200)


@router.post(
    "/api/copy",
    dependencies=[AdminOnly],
    response_class=Response,
    openapi_extra=openapi_body(OllamaCopyRequest),
    responses=_ADMIN,
)
async def copy(request: Request, models: ModelsDep, actor: ActorDep) -> Response:
    """Install a model a second time under another name (never the built-in model's)."""
    body = parse_body(await request.body(), OllamaCopyRequest)
    source, destination = body.source, body.destination
    with as_ollama(invalid=f'source "{source}" is invalid'):
        models.validate(source)
    with as_ollama(invalid=f'destination "{destination}" is invalid'):
        models.validate(destination)
    with as_ollama(not_found=f'model "{source}" not found'):
        await models.copy(source, destination, actor=actor)
    return Response(status_code=200)


@router.post(
    "/api/create",
    dependencies=[AdminOnly],
    openapi_extra=openapi_body(OllamaCreateRequest),
    responses=_PROGRESS_DOC,
)
async def create(request: Request, models: ModelsDep, actor: ActorDep) -> Response:
    """Create a model (`from`, `files`, `template`, `system`, `parameters`…); the body goes to
    the backend as it came. Progress as NDJSON unless `stream` is false."""
    raw = await request.body()
    body = parse_body(raw, OllamaCreateRequest)
    with as_ollama(invalid="invalid model name"):
        name = models.validate(body.target)
        if body.base:
            models.validate(body.base)
    fields: dict[str, Any] = orjson.loads(raw) or {}
    progress = models.create(name, fields, actor=actor)
    return await _progress(request, progress, body.stream is not False)


# -- progress streams -----------------------------------------------------------------------


async def _progress(
    request: Request, progress: AsyncIterator[PullProgress], stream: bool
) -> Response:
    """NDJSON lines of ``progress``, or its last object alone. What fails before the first item
    (a refusal, a backend that cannot) keeps its status; a client that leaves cancels it."""
    try:
        if stream:
            first = await cancel_on_disconnect(request, anext(progress, None))
        else:
            first = await cancel_on_disconnect(request, _last(progress))
    except ClientDisconnected:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator
        return Response(status_code=499)  # nobody reads it; the audit row says "cancelled"
    except BaseException:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator
        raise
    if first is None:
        raise errors.BackendStreamError("the backend ended without reporting any progress")
    if not stream:
        # Ollama's answer here has no charset
        return Response(orjson.dumps(progress_object(first)), media_type="application/json")
    return EventStream(
        _lines(first, progress),
        ping_interval=None,
        framing=NDJSON_HEADERS,
        shutdown=SHUTDOWN_LINE,
    )


async def _last(progress: AsyncIterator[PullProgress]) -> PullProgress | None:
    last = None
    async for item in progress:
        last = item
    return last


async def _lines(
    first: PullProgress, progress: AsyncIterator[PullProgress]
) -> AsyncIterator[bytes]:
    try:
        yield line(progress_object(first))
        async for item in progress:
            yield line(progress_object(item))
    except errors.LlmserveError as exc:
        log.warning("progress stream ended with %s: %s", exc.code, exc.detail)
        yield error_line(exc)
    except Exception as exc:
        log.exception("progress stream failed")
        yield error_line(errors.LlmserveError(f"internal error: {exc.__class__.__name__}"))
    finally:
        await progress.aclose()  # type: ignore[attr-defined]  # a ModelService generator
