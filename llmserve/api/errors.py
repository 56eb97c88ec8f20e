"""Every error body the API sends, built from the one registry (``llmserve/errors.py``).

Four envelopes, chosen by the path (:func:`face_of`): the native ``{"detail", "code"}``
(:func:`error_body`), OpenAI's ``{"error": {"message", "type", "param", "code"}}``
(:func:`openai_error_body`) on the ``/v1/`` routes (``/v1/responses`` included), Anthropic's
``{"type": "error", "error": {"type", "message"}}`` (:func:`anthropic_error_body`) on
``/v1/messages…``, and Ollama's ``{"error": "…"}`` (:func:`ollama_error_body`) on Ollama's own
routes (``/`` and ``/api/…`` outside ``/api/v1/``), so every client reads every refusal in its
own language, auth and limits included. Three ways
out: a response for routes and exception handlers
(:func:`error_response`), raw ASGI for the middlewares that answer before the app does
(:func:`send_error`), and one SSE event after the first streamed byte (``api/sse.py`` and
``api/openai_wire.py`` frame the same bodies).

The framework's own refusals (no such route, wrong method, a body that cannot be parsed) are
translated into error types too (:func:`framework_error`), so every 4xx carries a ``code``.
FastAPI's request validation keeps its 422 format (its ``detail`` is a list of errors).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Scope, Send

from llmserve import errors

#: Paths whose errors are answered in OpenAI's envelope when no route says otherwise.
OPENAI_PREFIX = "/v1/"
#: The native API's paths; every other ``/api/`` path is Ollama's.
NATIVE_PREFIX = "/api/v1/"
#: Anthropic's Messages API (``/v1/messages`` and ``/v1/messages/count_tokens``).
ANTHROPIC_PATH = "/v1/messages"

#: Who a path speaks to: llmserve's native clients, OpenAI's, Anthropic's, or Ollama's.
Face = Literal["native", "openai", "anthropic", "ollama"]

#: Anthropic's error ``type`` for each status (any other: ``invalid_request_error`` below 500,
#: ``api_error`` from 500). 529 is the status Anthropic gives an engine at capacity.
ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

#: The error type of each status the framework (Starlette, FastAPI) answers on its own.
FRAMEWORK_ERRORS: dict[int, type[errors.LlmserveError]] = {
    400: errors.InvalidRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.RouteNotFoundError,
    405: errors.MethodNotAllowedError,
    413: errors.BodyTooLargeError,
    431: errors.HeadersTooLargeError,
}

OpenAIBody = dict[str, dict[str, str | None]]


def status_for(error: errors.LlmserveError, face: Face = "native") -> int:
    """The error's status; on Anthropic's face an engine at capacity is 529, as there."""
    if face == "anthropic" and isinstance(error, errors.BackendBusyError):
        return 529
    return error.status


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def is_ollama_path(path: str) -> bool:
    """``/`` and ``/api/…`` outside the native ``/api/v1/``: the paths Ollama's clients call."""
    if path == "/":
        return True
    return path.startswith("/api/") and not path.startswith(NATIVE_PREFIX) and path != "/api/v1"


def face_of(path: str) -> Face:
    if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
        return "anthropic"
    if is_openai_path(path):
        return "openai"
    return "ollama" if is_ollama_path(path) else "native"


def error_headers(error: errors.LlmserveError) -> dict[str, str]:
    """``WWW-Authenticate`` on a 401, ``Retry-After`` when the error says when to retry, and
    the ``x-ratelimit-*`` headers of a key's limit."""
    headers = {}
    if isinstance(error, errors.AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="llmserve"'
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, errors.RateLimitedError):
        headers.update(error.headers)
    return headers


def error_body(error: errors.LlmserveError) -> dict[str, str]:
    """The native body: ``{"detail", "code"}``."""
    return {"detail": error.detail, "code": error.code}


def openai_envelope(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> OpenAIBody:
    """OpenAI's error envelope, for errors that are not an llmserve type (validation)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_body(error: errors.LlmserveError) -> OpenAIBody:
    """OpenAI's body for ``error``: its ``openai_type``, and its ``openai_code`` or ``code``."""
    return openai_envelope(error.detail, error.openai_type, None, error.openai_code or error.code)


def responses_error(error: errors.LlmserveError) -> dict[str, str]:
    """The ``error`` of a failed Responses API response, and of its stream's ``error`` event."""
    return {"code": error.openai_code or error.code, "message": error.detail}


def ollama_error_body(error: errors.LlmserveError) -> dict[str, str]:
    """Ollama's body: ``{"error": "<message>"}`` and nothing else."""
    return {"error": error.detail}


def anthropic_envelope(message: str, type_: str) -> dict[str, Any]:
    """Anthropic's error body, for errors that are not an llmserve type (validation)."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def anthropic_error_body(error: errors.LlmserveError) -> dict[str, Any]:
    """Anthropic's body for ``error``: the ``type`` its status has there."""
    status = status_for(error, "anthropic")
    fallback = "invalid_request_error" if status < 500 else "api_error"
    return anthropic_envelope(error.detail, ANTHROPIC_TYPES.get(status, fallback))


def body_for(error: errors.LlmserveError, face: Face) -> dict[str, Any]:
    if face == "openai":
        return openai_error_body(error)
    if face == "anthropic":
        return anthropic_error_body(error)
    return ollama_error_body(error) if face == "ollama" else error_body(error)


def error_response(error: errors.LlmserveError, *, face: Face = "native") -> JSONResponse:
    return JSONResponse(
        body_for(error, face), status_code=status_for(error, face), headers=error_headers(error)
    )


async def send_error(
    scope: Scope,
    send: Send,
    error: errors.LlmserveError,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with ``error`` from raw ASGI (a middleware, before or instead of the app), in the
    envelope of the path's face; ``headers`` are added to the error's own.

    Raises ``RuntimeError`` (from the server) if a response has already been started.
    """
    face = face_of(scope["path"])
    body = json.dumps(body_for(error, face)).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *[(k.lower().encode(), v.encode()) for k, v in error_headers(error).items()],
        *headers,
    ]
    status = status_for(error, face)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def framework_error(exc: HTTPException) -> errors.LlmserveError:
    """The error type of a refusal by Starlette or FastAPI, with a clearer text for a body
    that cannot be parsed (FastAPI says only "There was an error parsing the body")."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        detail = "the request body is not valid UTF-8 JSON"
    elif isinstance(cause, RecursionError):
        detail = "the request body's JSON is nested too deeply"
    else:
        detail = str(exc.detail)
    fallback = errors.InvalidRequestError if exc.status_code < 500 else errors.LlmserveError
    return FRAMEWORK_ERRORS.get(exc.status_code, fallback)(detail)


def framework_error_response(exc: HTTPException, *, face: Face) -> JSONResponse:
    """:func:`error_response` for a framework refusal, with its status and headers (``Allow``)."""
    response = error_response(framework_error(exc), face=face)
    response.status_code = exc.status_code  # differs only for a status with no error type
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def install(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.LlmserveError)
        return error_response(exc, face=face_of(request.scope["path"]))

    async def framework(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return framework_error_response(exc, face=face_of(request.scope["path"]))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own 422 echoes the input, and JSON cannot carry NaN or Infinity (a body
        # may contain them: Python's parser accepts them), so they are echoed as strings.
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(errors.LlmserveError, handle)
    app.add_exception_handler(HTTPException, framework)
    app.add_exception_handler(RequestValidationError, invalid)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


class FaceRoute(APIRoute):
    """A route whose failures before the first byte are answered in its face's envelope:
    ``validation`` turns FastAPI's 422 into the face's 400, llmserve errors and the framework's
    own refusals (a body it cannot parse) get the face's body. Subclasses set both."""

    face: Face = "native"
    validation: Callable[[RequestValidationError], JSONResponse]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        face, validation = self.face, type(self).validation

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation(exc)
            except errors.LlmserveError as exc:
                return error_response(exc, face=face)
            except HTTPException as exc:
                return framework_error_response(exc, face=face)

        return handle
