"""The OpenAPI document as the contract: the errors each route can answer, declared from the
one error registry (``llmserve/errors.py``), in the envelope of the route's face.

A route declares the errors it raises itself, by type:
``responses=error_responses(*GENERATION_ERRORS, face="openai")``; each type's status comes from
the registry, so a status moves in one place. :func:`install` completes the document with what
every route can answer before it runs (the middlewares' refusals: a malformed request, a body
or headers too large, no key on a route that needs one) and with each face's validation status
(FastAPI's 422 on the native API; 400 in the envelope of the OpenAI, Anthropic and Ollama
faces, which never answer 422).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from llmserve import errors
from llmserve.api.errors import Face, face_of, status_for

ErrorType = type[errors.LlmserveError]
Responses = dict[int | str, dict[str, Any]]

#: What a backend call can end with.
BACKEND_ERRORS: tuple[ErrorType, ...] = (
    errors.BackendError,
    errors.BackendUnavailableError,
    errors.BackendBusyError,
    errors.BackendTimeoutError,
)
#: What a generation (or an embedding) can end with before its first byte: the request's
#: content, the model, the key's policy, admission, the backend, the server stopping.
GENERATION_ERRORS: tuple[ErrorType, ...] = (
    errors.InvalidRequestError,
    errors.UnsupportedError,
    errors.ImageUrlNotAllowedError,
    errors.InvalidModelNameError,
    errors.PromptTooLargeError,
    errors.ModelNotAllowedError,
    errors.ModelNotFoundError,
    errors.OverloadedError,
    errors.RateLimitedError,
    errors.PolicyUnavailableError,
    errors.ShuttingDownError,
    *BACKEND_ERRORS,
)
#: What a model-management action can end with (admin keys only).
ADMIN_ERRORS: tuple[ErrorType, ...] = (
    errors.PermissionDeniedError,
    errors.InvalidModelNameError,
    errors.ModelNotFoundError,
    errors.ModelProtectedError,
    errors.ModelInUseError,
    errors.NotSupportedError,
    *BACKEND_ERRORS,
)
#: What the middlewares answer on every route, before it runs.
EVERY_ROUTE: tuple[ErrorType, ...] = (
    errors.InvalidRequestError,  # an invalid Content-Length, a body that is not UTF-8 JSON
    errors.BodyTooLargeError,
    errors.HeadersTooLargeError,
)


class NativeError(BaseModel):
    """The native API's error body."""

    detail: str
    code: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error envelope."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error envelope."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class OllamaError(BaseModel):
    """Ollama's error body."""

    error: str


ENVELOPES: dict[Face, type[BaseModel]] = {
    "native": NativeError,
    "openai": OpenAIError,
    "anthropic": AnthropicError,
    "ollama": OllamaError,
}
_REF = "#/components/schemas/{model}"
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer"},
}


def _status(kind: ErrorType, face: Face) -> int:
    # status_for reads only the type (and the face), never the error's message.
    return status_for(kind.__new__(kind), face)


def error_responses(*kinds: ErrorType, face: Face) -> Responses:
    """The ``responses`` of a route that can answer ``kinds``: per status, the face's
    envelope, the codes it may carry, and its headers."""
    by_status: dict[int, list[ErrorType]] = {}
    for kind in kinds:
        by_status.setdefault(_status(kind, face), []).append(kind)
    envelope = ENVELOPES[face].__name__
    out: Responses = {}
    for status, found in sorted(by_status.items()):
        codes = ", ".join(f"`{kind.code}`" for kind in found)
        response: dict[str, Any] = {
            "description": f"Refused or failed: {codes}.",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=envelope)}}},
        }
        headers: dict[str, Any] = {}
        if any(issubclass(kind, errors.AuthenticationError) for kind in found):
            headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
        if status in (429, 503, 529):
            headers["Retry-After"] = _RETRY_AFTER
        if headers:
            response["headers"] = headers
        out[status] = response
    return out


def event_stream(description: str, events: list[str] | None = None) -> dict[str, Any]:
    """A ``200`` whose body is Server-Sent Events: each event has ``data`` (JSON text) and an
    ``event`` name (``message`` when the server names none; one of ``events`` when given)."""
    name: dict[str, Any] = {"type": "string"} if events is None else {"enum": events}
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": name,
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                }
            }
        },
    }


def ndjson(description: str) -> dict[str, Any]:
    """A ``200`` whose body is NDJSON lines (Ollama's streams): one JSON object per line."""
    return {
        "description": description,
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }


def install(
    app: FastAPI,
    *,
    public_paths: Collection[str],
    query_values: dict[str, list[str]] | None = None,
) -> None:
    """Make ``app.openapi()`` declare, on every operation, what the middlewares can answer
    (:data:`EVERY_ROUTE`, and 401 outside ``public_paths``) and each face's validation
    status. ``query_values`` are the values of the query parameters the configuration
    decides (``server``: the backend servers' base URLs); a parameter with none is left out."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            complete(document, public_paths, query_values or {})
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(
    document: dict[str, Any],
    public_paths: Collection[str],
    query_values: dict[str, list[str]],
) -> None:
    """Add the refusals every operation of ``document`` can meet, and the values of the
    configured query parameters (see :func:`install`)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in ENVELOPES.values():
        found = model.model_json_schema(ref_template=_REF)
        schemas.update(found.pop("$defs", {}))
        schemas.setdefault(model.__name__, found)
    for path, operations in document.get("paths", {}).items():
        for operation in _operations(operations):
            _hoist_definitions(operation.get("requestBody", {}), schemas)
            _configured_values(operation, query_values)
        face = face_of(path)
        kinds = list(EVERY_ROUTE)
        if path not in public_paths:
            kinds.append(errors.AuthenticationError)
        for operation in _operations(operations):
            responses = operation.setdefault("responses", {})
            if face != "native":
                responses.pop("422", None)  # only the native API answers FastAPI's 422
            for status, response in error_responses(*kinds, face=face).items():
                _merge(responses, str(status), response)


def _configured_values(operation: dict[str, Any], query_values: dict[str, list[str]]) -> None:
    kept = []
    for parameter in operation.get("parameters", []):
        values = query_values.get(parameter.get("name", ""))
        if parameter.get("in") == "query" and values is not None:
            if not values:
                continue
            parameter["schema"] = {"type": "string", "enum": values}
        kept.append(parameter)
    if "parameters" in operation:
        operation["parameters"] = kept


def _hoist_definitions(body: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Move the ``$defs`` of a request body's schema written by hand (``openapi_extra``) to the
    document's components, where its ``#/$defs/…`` references can be resolved."""
    for media in body.get("content", {}).values():
        schema = media.get("schema", {})
        definitions = schema.pop("$defs", None)
        if not definitions:
            continue
        names = {
            name: _free_name(name, definition, schemas) for name, definition in definitions.items()
        }
        renamed = _renamed(definitions, names)
        for name, definition in renamed.items():
            schemas[names[name]] = definition
        media["schema"] = _renamed(schema, names)


def _free_name(name: str, definition: Any, schemas: dict[str, Any]) -> str:
    """``name``, or ``name_2``… when the components hold another schema by that name."""
    candidate, n = name, 1
    while candidate in schemas and schemas[candidate] != _renamed(definition, {}):
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = names.get(ref.removeprefix("#/$defs/"), ref.removeprefix("#/$defs/"))
            value = {**value, "$ref": _REF.format(model=target)}
        return {key: _renamed(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item, names) for item in value]
    return value


def _operations(operations: dict[str, Any]) -> Iterable[dict[str, Any]]:
    methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
    return (operations[m] for m in methods if m in operations)


def _merge(responses: dict[str, Any], status: str, response: dict[str, Any]) -> None:
    """Add ``response`` under ``status``, or add its codes to what the route declared."""
    declared = responses.get(status)
    if declared is None:
        responses[status] = response
        return
    description = str(declared.get("description", ""))
    if description.startswith("Refused or failed: ") and response["description"] not in (
        description
    ):
        extra = response["description"].removeprefix("Refused or failed: ").rstrip(".")
        declared["description"] = description.rstrip(".") + f", {extra}."
    declared.setdefault("content", response["content"])
    for name, header in response.get("headers", {}).items():
        declared.setdefault("headers", {}).setdefault(name, header)
