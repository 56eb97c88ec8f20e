"""Every 4xx carries a machine ``code``, the framework's own refusals included: a body that is
not UTF-8 or nested too deeply, no such route, a wrong method; in OpenAI's envelope on ``/v1/``."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fakes.ollama_double import OllamaDouble

NOT_UTF8 = b'{"prompt": "\xff\xfe caf\xc3"}'
TOO_DEEP = b"[" * 100_000
JSON = {"content-type": "application/json"}


def _openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("url", ["/api/v1/generate", "/api/v1/chat", "/api/v1/embed"])
def test_invalid_utf8_on_a_native_route_is_400_with_a_code(
    client: TestClient, ollama: OllamaDouble, url: str
) -> None:
    response = client.post(url, content=NOT_UTF8, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "detail": "the request body is not valid UTF-8 JSON",
        "code": "invalid_request",
    }
    assert ollama.requests == []


@pytest.mark.parametrize("url", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_invalid_utf8_on_an_openai_route_is_400_in_openais_envelope(
    client: TestClient, ollama: OllamaDouble, url: str
) -> None:
    error = _openai_error(client.post(url, content=NOT_UTF8, headers=JSON), 400)
    assert error == {
        "message": "the request body is not valid UTF-8 JSON",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    assert ollama.requests == []


def test_json_nested_too_deeply_is_400_with_a_code(client: TestClient) -> None:
    response = client.post("/api/v1/generate", content=TOO_DEEP, headers=JSON)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert "nested too deeply" in response.json()["detail"]
    error = _openai_error(client.post("/v1/chat/completions", content=TOO_DEEP, headers=JSON), 400)
    assert error["code"] == "invalid_request"


def test_truncated_json_keeps_fastapis_422(client: TestClient) -> None:
    response = client.post("/api/v1/generate", content=b'{"prompt": "hi"', headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_no_such_route_is_404_with_a_code(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found", "code": "not_found"}
    error = _openai_error(client.get("/v1/nothing-here"), 404)
    assert error == {
        "message": "Not Found",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }


def test_a_wrong_method_is_405_with_a_code_and_allow(client: TestClient) -> None:
    native = client.delete("/api/v1/chat")
    assert native.status_code == 405
    assert native.json() == {"detail": "Method Not Allowed", "code": "method_not_allowed"}
    assert native.headers["allow"] == "POST"
    openai = client.get("/v1/chat/completions")
    error = _openai_error(openai, 405)
    assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")
    assert openai.headers["allow"] == "POST"


def test_headers_over_the_limit_are_431_in_each_face(client: TestClient) -> None:
    big = {"x-big": "a" * 40_000}
    native = client.get("/api/v1/models", headers=big)
    assert native.status_code == 431
    assert native.json() == {
        "detail": "the request headers exceed 32768 bytes",
        "code": "headers_too_large",
    }
    error = _openai_error(client.get("/v1/models", headers=big), 431)
    assert (error["type"], error["code"]) == ("invalid_request_error", "headers_too_large")


def test_an_invalid_content_length_is_400_with_a_code(client: TestClient) -> None:
    response = client.post(
        "/api/v1/generate", content=b"{}", headers={**JSON, "content-length": "abc"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "invalid Content-Length header", "code": "invalid_request"}
