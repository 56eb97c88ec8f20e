"""The raw ASGI door to ``POST /api/v1/generate`` answers exactly as the FastAPI route does.

Every body below is sent to the app with the door in front and to the same app without it:
status, content type and body must match. Valid requests must go through the door; anything
else must be handed back to FastAPI (its 422 format), which is what keeps the two identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from llmserve.api.routes import generate
from llmserve.api.schemas import GenerateResponse
from tests.fakes.ollama_double import OllamaDouble, Script

URL = "/api/v1/generate"
JSON = "application/json"

BODIES: list[tuple[str, bytes, str]] = [
    ("valid", b'{"prompt": "hi"}', JSON),
    ("valid, charset", b'{"prompt": "hi"}', "application/json; charset=utf-8"),
    ("valid, options", b'{"prompt":"hi","system":"s","options":{"stop":["x"],"seed":1}}', JSON),
    ("valid, stop string", b'{"prompt": "hi", "options": {"stop": "x", "top_k": 3}}', JSON),
    ("blank prompt", b'{"prompt": "  "}', JSON),
    ("no prompt", b"{}", JSON),
    ("extra field", b'{"prompt": "hi", "steam": true}', JSON),
    ("stream as string", b'{"prompt": "hi", "stream": "yes"}', JSON),
    ("temperature too high", b'{"prompt": "hi", "options": {"temperature": 3}}', JSON),
    ("top_k as string", b'{"prompt": "hi", "options": {"top_k": "5"}}', JSON),
    ("NaN", b'{"prompt": "hi", "options": {"temperature": NaN}}', JSON),
    ("malformed", b"{not json", JSON),
    ("empty body", b"", JSON),
    ("array", b'[{"prompt": "hi"}]', JSON),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', JSON),
    ("lone surrogate", b'{"prompt": "\\ud800"}', JSON),
    ("too long", json.dumps({"prompt": "x" * 41}).encode(), JSON),
    ("text/plain", b'{"prompt": "hi"}', "text/plain"),
    ("no content type", b'{"prompt": "hi"}', ""),
]


def _post(client: TestClient, body: bytes, content_type: str) -> tuple[int, str, object]:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(URL, content=body, headers=headers)
    kind = response.headers.get("content-type", "")
    payload = response.json() if kind.startswith(JSON) else response.text
    return response.status_code, kind, payload


@pytest.fixture
def pair(make_client: Callable[..., TestClient]) -> tuple[TestClient, TestClient]:
    with_door, without = make_client(MAX_PROMPT_CHARS=40), make_client(MAX_PROMPT_CHARS=40)
    door = without.app.router.routes.pop(0)  # type: ignore[attr-defined]
    assert isinstance(door.endpoint, generate.FastGenerate)
    return with_door, without


@pytest.mark.parametrize(
    ("body", "content_type"), [b[1:] for b in BODIES], ids=[b[0] for b in BODIES]
)
def test_the_door_answers_like_the_fastapi_route(
    pair: tuple[TestClient, TestClient],
    ollama: OllamaDouble,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    content_type: str,
) -> None:
    declined: list[bytes | None] = []
    hand_back = generate.FastGenerate._to_fastapi

    async def counted(self, scope, receive, send, raw):  # type: ignore[no-untyped-def]
        declined.append(raw)
        await hand_back(self, scope, receive, send, raw)

    monkeypatch.setattr(generate.FastGenerate, "_to_fastapi", counted)
    ollama.default_script = Script(tokens=["a ", "b"])
    with_door, without = pair
    through_door = _post(with_door, body, content_type)
    assert len(declined) <= 1
    taken = not declined
    through_fastapi = _post(without, body, content_type)
    assert through_door == through_fastapi
    status = through_door[0]
    # Bodies that pass the schema go through the door, including one the service refuses
    # (413); everything else is handed back (the parser refuses invalid UTF-8 and lone
    # surrogates, so FastAPI's route gives its 400 for those).
    assert taken == (status in (200, 413)), through_door


def test_a_stream_through_the_door_is_the_same_stream(
    pair: tuple[TestClient, TestClient], ollama: OllamaDouble
) -> None:
    ollama.default_script = Script(tokens=["one ", "two ", "three"])
    texts = []
    for client in pair:
        response = client.post(URL, json={"prompt": "hi", "stream": True})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["x-request-id"]
        texts.append(response.text)
    assert texts[0] == texts[1]
    assert texts[0].endswith("data: {}\n\n") and texts[0].count('"response"') == 3


def test_other_methods_get_fastapis_405_with_a_code(client: TestClient) -> None:
    response = client.get(URL)
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed", "code": "method_not_allowed"}
    assert response.headers["allow"] == "POST"


def test_the_door_counts_under_the_route_in_metrics(
    client: TestClient, ollama: OllamaDouble
) -> None:
    ollama.default_script = Script(tokens=["a"])
    assert client.post(URL, json={"prompt": "hi"}).status_code == 200
    metrics = client.get("/metrics").text
    line = 'llmserve_http_requests_total{route="/api/v1/generate",status="200"} 1.0'
    assert line in metrics


def test_the_whole_answer_is_byte_for_byte_the_schemas_json(
    client: TestClient, ollama: OllamaDouble
) -> None:
    # Encoded without building GenerateResponse (orjson): same bytes as the model would give,
    # for text that needs escaping and text that does not.
    ollama.default_script = Script(tokens=['He said "hi"\n', "naïve ", "東京 ", "\\ 🎉", "\t</b>"])
    response = client.post(URL, json={"prompt": "hi"})
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    model = GenerateResponse.model_validate_json(response.content)
    assert response.content == model.model_dump_json().encode()
    assert model.response == 'He said "hi"\nnaïve 東京 \\ 🎉\t</b>'
