"""The Responses and Messages faces stay thin: parse, call the one entry point, render. They never
import a backend, the database, admission control, key policy or the request log; and every
llmserve error has an Anthropic error type and status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmserve import errors
from llmserve.api.errors import anthropic_error_body, face_of, status_for

ROOT = Path(__file__).resolve().parents[2] / "llmserve" / "api"
FACES = [
    "anthropic_schemas.py",
    "anthropic_wire.py",
    "responses_schemas.py",
    "responses_wire.py",
    "routes/messages.py",
    "routes/responses.py",
]
FORBIDDEN = (
    "llmserve.backends",
    "llmserve.db",
    "llmserve.services.admission",
    "llmserve.services.policy",
    "llmserve.services.request_log",
    "llmserve.services.usage",
    "sqlalchemy",
    "httpx",
)
ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
}


@pytest.mark.parametrize("module", FACES)
def test_a_face_imports_no_backend_database_or_admission(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    imported = [
        name
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
    ]
    assert imported  # the walk saw the module's imports
    assert [name for name in imported if name.startswith(FORBIDDEN)] == []


@pytest.mark.parametrize("error_type", errors.all_error_types(), ids=lambda t: t.__name__)
def test_every_error_has_an_anthropic_type_and_status(
    error_type: type[errors.LlmserveError],
) -> None:
    error = error_type("x")
    body = anthropic_error_body(error)
    assert body["type"] == "error" and body["error"]["message"] == "x"
    assert body["error"]["type"] in ANTHROPIC_TYPES
    status = status_for(error, "anthropic")
    assert status == (529 if error_type is errors.BackendBusyError else error_type.status)
    assert (body["error"]["type"] == "api_error") == (status >= 500 and status != 529)


def test_the_paths_faces() -> None:
    assert face_of("/v1/messages") == face_of("/v1/messages/count_tokens") == "anthropic"
    assert face_of("/v1/responses") == face_of("/v1/chat/completions") == "openai"
    assert face_of("/v1/messagesx") == "openai"
