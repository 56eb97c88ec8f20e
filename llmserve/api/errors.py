"""One map from llmserve error type to HTTP status (SPEC §3, §7), and the JSON error body."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llmserve import errors

#: HTTP status per error type; the most specific class in the MRO wins.
STATUS: dict[type[errors.LlmserveError], int] = {
    errors.LlmserveError: 500,
    errors.InvalidRequestError: 400,
    errors.PromptTooLargeError: 413,
    errors.InvalidModelNameError: 400,
    errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403,
    errors.ModelNotFoundError: 404,
    errors.ModelProtectedError: 403,
    errors.ModelInUseError: 409,
    errors.NotSupportedError: 501,
    errors.OverloadedError: 429,
    errors.DatabaseUnavailableError: 503,
    errors.BackendError: 502,
    errors.BackendUnavailableError: 503,
    errors.BackendBusyError: 503,
    errors.BackendTimeoutError: 504,
    errors.BackendStreamError: 502,
}


def status_for(error: errors.LlmserveError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(error: errors.LlmserveError) -> dict[str, str]:
    return {"detail": error.detail, "code": error.code}


def error_response(error: errors.LlmserveError) -> JSONResponse:
    headers = {}
    if isinstance(error, errors.AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="llmserve"'
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(error_body(error), status_code=status_for(error), headers=headers)


def install(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.LlmserveError)
        return error_response(exc)

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own 422 echoes the input, and JSON cannot carry NaN or Infinity (a body
        # may contain them: Python's parser accepts them), so they are echoed as strings.
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(errors.LlmserveError, handle)
    app.add_exception_handler(RequestValidationError, invalid)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
