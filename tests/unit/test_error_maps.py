"""One error registry: every error type declares its code, HTTP status, exit code, OpenAI type and
request-log status (``llmserve/errors.py``), and every face builds its error from it."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import typer
from starlette.exceptions import HTTPException

from llmserve import errors
from llmserve.api import openai_wire, sse
from llmserve.api.errors import (
    FRAMEWORK_ERRORS,
    error_body,
    error_response,
    framework_error,
    send_error,
    status_for,
)
from llmserve.cli._run import exit_code_for, run

ALL = errors.all_error_types()
by_name = pytest.mark.parametrize("error_type", ALL, ids=lambda t: t.__name__)

#: Today's contract, pinned: (code, HTTP status, exit code). A new type must be added here too.
EXPECTED: dict[type[errors.LlmserveError], tuple[str, int, int]] = {
    errors.LlmserveError: ("internal_error", 500, 1),
    errors.InvalidRequestError: ("invalid_request", 400, 2),
    errors.PromptTooLargeError: ("prompt_too_large", 413, 2),
    errors.InvalidModelNameError: ("invalid_model_name", 400, 2),
    errors.UnsupportedError: ("unsupported", 400, 5),
    errors.ImageUrlNotAllowedError: ("image_url_not_allowed", 400, 2),
    errors.BodyTooLargeError: ("body_too_large", 413, 2),
    errors.HeadersTooLargeError: ("headers_too_large", 431, 2),
    errors.RouteNotFoundError: ("not_found", 404, 2),
    errors.MethodNotAllowedError: ("method_not_allowed", 405, 2),
    errors.AuthenticationError: ("unauthorized", 401, 11),
    errors.PermissionDeniedError: ("forbidden", 403, 12),
    errors.ModelNotAllowedError: ("model_not_allowed", 403, 12),
    errors.ModelNotFoundError: ("model_not_found", 404, 3),
    errors.ModelProtectedError: ("model_protected", 403, 4),
    errors.ModelInUseError: ("model_in_use", 409, 4),
    errors.NotSupportedError: ("not_supported", 501, 5),
    errors.OverloadedError: ("overloaded", 429, 6),
    errors.RateLimitedError: ("rate_limited", 429, 6),
    errors.PolicyUnavailableError: ("policy_unavailable", 503, 7),
    errors.DatabaseUnavailableError: ("database_unavailable", 503, 7),
    errors.ShuttingDownError: ("shutting_down", 503, 9),
    errors.BackendError: ("backend_error", 502, 8),
    errors.BackendUnavailableError: ("backend_unavailable", 503, 9),
    errors.BackendBusyError: ("backend_busy", 503, 9),
    errors.BackendTimeoutError: ("backend_timeout", 504, 10),
    errors.BackendStreamError: ("backend_stream_error", 502, 8),
}

#: OpenAI's error ``type`` by status, as OpenAI answers (401 too: ``invalid_api_key``).
OPENAI_TYPES = {
    **dict.fromkeys((400, 401, 405, 409, 413, 422, 431), "invalid_request_error"),
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


# -- the registry ------------------------------------------------------------------------------


@by_name
def test_every_error_type_resolves_every_attribute(error_type: type[errors.LlmserveError]) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", error_type.code)
    assert isinstance(error_type.status, int) and 400 <= error_type.status <= 599
    assert isinstance(error_type.exit_code, int) and 1 <= error_type.exit_code <= 125
    assert error_type.openai_type in {*OPENAI_TYPES.values(), "api_error"}
    assert error_type.openai_code is None or re.fullmatch(r"[a-z_]+", error_type.openai_code)
    assert error_type.log_status in ("rejected", "timeout", "error")


def test_every_code_is_unique() -> None:
    twice = [code for code, n in Counter(t.code for t in ALL).items() if n > 1]
    assert not twice, f"codes used by more than one error type: {twice}"


def test_the_registry_is_todays_contract() -> None:
    assert {t: (t.code, t.status, t.exit_code) for t in ALL} == EXPECTED


@by_name
def test_openai_type_follows_the_status(error_type: type[errors.LlmserveError]) -> None:
    assert error_type.openai_type == OPENAI_TYPES.get(error_type.status, "api_error")


def test_log_status_refusals_are_rejected_a_timeout_is_timeout_the_rest_error() -> None:
    special = {t: t.log_status for t in ALL if t.log_status != "error"}
    assert special == {
        errors.OverloadedError: "rejected",
        errors.RateLimitedError: "rejected",
        errors.ModelNotAllowedError: "rejected",
        errors.BackendTimeoutError: "timeout",
    }


def test_401_is_invalid_api_key_in_openais_envelope() -> None:
    body = openai_wire.error_body(errors.AuthenticationError("no key"))
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_api_key"


# -- every envelope, for every type ------------------------------------------------------------


def _sse(event: bytes) -> tuple[str | None, Any]:
    assert event.endswith(b"\n\n")
    name, data = None, None
    for line in event.decode().strip("\n").split("\n"):
        field, _, value = line.partition(": ")
        if field == "event":
            name = value
        else:
            assert field == "data"
            data = json.loads(value)
    return name, data


@by_name
def test_native_body_and_response(error_type: type[errors.LlmserveError]) -> None:
    error = error_type("something failed")
    response = error_response(error)
    assert status_for(error) == response.status_code == error_type.status
    assert json.loads(response.body) == error_body(error)
    assert error_body(error) == {"detail": "something failed", "code": error_type.code}


@by_name
def test_openai_body_and_response(error_type: type[errors.LlmserveError]) -> None:
    error = error_type("something failed")
    body = {
        "error": {
            "message": "something failed",
            "type": error_type.openai_type,
            "param": None,
            "code": error_type.openai_code or error_type.code,
        }
    }
    assert openai_wire.error_body(error) == body
    assert openai_wire.error_type(error) == error_type.openai_type
    response = openai_wire.error_response(error)
    assert response.status_code == error_type.status
    assert json.loads(response.body) == body


@by_name
def test_native_sse_error_event(error_type: type[errors.LlmserveError]) -> None:
    error = error_type("something failed")
    assert _sse(sse.error_event(error)) == ("error", error_body(error))


@by_name
def test_openai_sse_error_event(error_type: type[errors.LlmserveError]) -> None:
    error = error_type("something failed")
    assert _sse(openai_wire.error_event(error)) == (None, openai_wire.error_body(error))


@by_name
def test_cli_exit_code(error_type: type[errors.LlmserveError]) -> None:
    error = error_type("something failed")
    assert exit_code_for(error) == error_type.exit_code

    async def failing() -> None:
        raise error

    with pytest.raises(typer.Exit) as exited:
        run(failing())
    assert exited.value.exit_code == error_type.exit_code


@by_name
@pytest.mark.parametrize("path", ["/api/v1/generate", "/v1/chat/completions", "/api/chat"])
def test_raw_asgi_error(error_type: type[errors.LlmserveError], path: str) -> None:
    error = error_type("something failed")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    extra = [(b"connection", b"close")]
    asyncio.run(send_error({"type": "http", "path": path}, send, error, extra))  # type: ignore[arg-type]
    start, body = sent
    assert start["status"] == error_type.status
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body["body"])).encode()
    assert headers[b"connection"] == b"close"
    if error.retry_after is not None:
        assert headers[b"retry-after"] == str(error.retry_after).encode()
    expected = openai_wire.error_body(error) if path.startswith("/v1/") else error_body(error)
    if path == "/api/chat":  # Ollama's own path: its one-key envelope
        expected = {"error": "something failed"}
    assert json.loads(body["body"]) == expected


def test_the_shutdown_event_is_the_registrys() -> None:
    assert _sse(sse.SHUTDOWN) == ("error", error_body(errors.ShuttingDownError()))


# -- the framework's own refusals ----------------------------------------------------------------


def test_each_framework_status_has_an_error_type_with_that_status() -> None:
    assert {status: cls.status for status, cls in FRAMEWORK_ERRORS.items()} == {
        status: status for status in FRAMEWORK_ERRORS
    }


@pytest.mark.parametrize(
    ("cause", "detail"),
    [
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not valid UTF-8"),
        (RecursionError("too deep"), "nested too deeply"),
        (None, "There was an error parsing the body"),
    ],
)
def test_an_unparseable_body_is_invalid_request(cause: BaseException | None, detail: str) -> None:
    exc = HTTPException(400, "There was an error parsing the body")
    exc.__cause__ = cause
    error = framework_error(exc)
    assert type(error) is errors.InvalidRequestError and detail in error.detail


def test_starlettes_404_and_405_keep_their_text() -> None:
    assert error_body(framework_error(HTTPException(404))) == {
        "detail": "Not Found",
        "code": "not_found",
    }
    assert error_body(framework_error(HTTPException(405))) == {
        "detail": "Method Not Allowed",
        "code": "method_not_allowed",
    }


# -- no error body is written by hand ------------------------------------------------------------

PACKAGE = Path(errors.__file__).parent
#: The modules that build error bodies; everywhere else goes through them.
REGISTRY_MODULES = {PACKAGE / "errors.py", PACKAGE / "api" / "errors.py"}
_HAND_WRITTEN = re.compile(r"""["']code["']\s*:""")


def _hand_written_codes(source: str) -> list[int]:
    """Lines of ``source`` with a ``"code"`` dict key, or a string holding ``"code":`` (JSON
    written by hand); docstrings may describe the shapes."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if isinstance(k, ast.Constant) and k.value == "code"]
            found.extend(k.lineno for k in keys)
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            value = node.value
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if isinstance(text, str) and _HAND_WRITTEN.search(text):
                found.append(node.lineno)
    return found


def test_no_error_body_is_written_by_hand_outside_the_registry() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in REGISTRY_MODULES
        for line in _hand_written_codes(path.read_text())
    ]
    assert not offenders, f"build error bodies with llmserve.api.errors instead: {offenders}"


def test_the_hand_written_body_check_finds_one() -> None:
    assert _hand_written_codes('payload = {"detail": d, "code": "x"}') == [1]
    assert _hand_written_codes("""BODY = b'{"detail":"x","code":"y"}'""") == [1]
    assert _hand_written_codes('def f():\n    """Sends ``{"code": ...}``."""') == []


def test_a_rate_limit_carries_retry_after_and_openais_headers() -> None:
    from llmserve.api.errors import error_headers

    error = errors.RateLimitedError(
        "over",
        reason="rpm",
        retry_after=17,
        headers={"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0"},
    )
    assert error_headers(error) == {
        "Retry-After": "17",
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
    }
