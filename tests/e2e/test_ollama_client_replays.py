"""Replays of what Open WebUI, Continue and Cline send to an Ollama server, against a running
``llmserve serve`` (the sequences and their sources are in ``ollama_client_sequences.py``).

Each sequence runs twice, on one server per mode:

* ``no-keys`` (``AUTH_REQUIRED=false``): the client is set up as for a bare Ollama, no key;
* ``keys-required`` (``AUTH_REQUIRED=true``): the client is given a key (an admin key for the
  admin sequence) and sends it the way its source does. A call the client makes without a key
  gets Ollama's error object with 401: Cline's model picker asks ``/api/tags`` with no
  ``Authorization`` header even when a key is configured, so against a secured llmserve it
  lists no models (Cline shows an empty list; the model name can still be typed, and chat,
  which sends the key, works).

Every answer must have the shape that client reads (a JSON schema per call), pass the parsing the
client does (``checks``), and every generation must reach Ollama as the client sent it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.ollama_client_sequences import (
    DELETED_MODEL,
    EMBEDDING_MODEL,
    LLAMA,
    PREVIOUS_CALL_ID,
    PULLED_MODEL,
    SEQUENCES,
    VISION_MODEL,
    Call,
    Sequence,
)
from tests.e2e.test_ollama_clients import (
    Deployment,
    assert_same_messages,
    deployment,
    install_models,
)
from tests.fakes.ollama_double import OllamaDouble, Script

MODES = {"no-keys": False, "keys-required": True}

#: Continue's reading of ``/api/show``'s ``parameters`` (core/llm/llms/Ollama.ts).
CONTINUE_PARAMETER_LINE = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')


@pytest.fixture(scope="module", params=list(MODES))
def llmserve(
    request: pytest.FixtureRequest,
    database_url: str,
    ollama_server: OllamaDouble,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """One server per mode (pytest runs every test of a mode before starting the next)."""
    cwd = tmp_path_factory.mktemp(f"replays-{request.param}")
    with deployment(
        database_url, ollama_server, cwd, auth_required=MODES[request.param]
    ) as running:
        yield running


@pytest.fixture
def double(ollama: OllamaDouble) -> OllamaDouble:
    """conftest's double, with the models the sequences name; one of them is loaded."""
    install_models(ollama)
    ollama.add_registry_model(PULLED_MODEL)
    for name in (LLAMA, VISION_MODEL, EMBEDDING_MODEL, DELETED_MODEL):
        assert ollama.find_model(name) is not None, f"the double lacks {name}"
    # A model already running, as on a used Ollama, so that /api/ps has something to list.
    loaded = httpx.post(ollama.base_url + "/api/generate", json={"model": LLAMA}, trust_env=False)
    assert loaded.json()["done_reason"] == "load"
    return ollama


# -- what the clients do with the answers, beyond their shape -------------------------------------


def open_webui_version(answer: dict[str, Any]) -> None:
    """routers/ollama.py: the lowest version wins, compared as a tuple of ints."""
    version = answer["version"]
    assert tuple(map(int, re.sub(r"^v|-.*", "", version).split("."))), version


def open_webui_expires_at(answer: dict[str, Any]) -> None:
    """routers/ollama.py: ``datetime.fromisoformat(expires_at)`` for every loaded model."""
    assert answer["models"], "a model is loaded: /api/ps must list it"
    for model in answer["models"]:
        datetime.fromisoformat(model["expires_at"])


def continue_parameters(answer: dict[str, Any]) -> None:
    """Ollama.ts: each line of ``parameters`` is ``key value``; a stop value is JSON, a
    num_ctx an integer. A line that does not match is skipped by Continue, so its stop words
    would be lost."""
    for line in answer["parameters"].split("\n"):
        match = CONTINUE_PARAMETER_LINE.match(line)
        assert match, f"Continue cannot read the parameter line {line!r}"
        key, value = match.groups()
        if key == "stop":
            assert isinstance(json.loads(value), str)
        if key == "num_ctx":
            int(value)
    assert isinstance(answer["template"], str)


CHECKS = {
    "open_webui_version": open_webui_version,
    "open_webui_expires_at": open_webui_expires_at,
    "continue_parameters": continue_parameters,
}


# -- the replay -----------------------------------------------------------------------------------


def _with_call_id(value: Any, call_id: str | None) -> Any:
    """``value`` with :data:`PREVIOUS_CALL_ID` replaced by the id the previous answer gave."""
    if value == PREVIOUS_CALL_ID:
        assert call_id, "the previous answer had no tool call id to send back"
        return call_id
    if isinstance(value, dict):
        return {k: _with_call_id(v, call_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_call_id(v, call_id) for v in value]
    return value


def _authorization(call: Call, key: str | None) -> str | None:
    if call.key == "never":
        return None
    if call.key == "always":
        # With an empty key the client sends "Bearer "; a field value's trailing space is not
        # part of it (RFC 9110 5.5), so the server reads "Bearer" (and httpx sends no such space).
        return f"Bearer {key}" if key else "Bearer"
    return f"Bearer {key}" if key else None


def _objects(call: Call, response: httpx.Response) -> list[dict[str, Any]]:
    """The answer as the client reads it: the NDJSON lines, or the one object (none for an
    empty body, which only the status matters for)."""
    if call.stream:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [line for line in response.text.split("\n") if line]
        assert response.text.endswith("\n") and lines
        return [json.loads(line) for line in lines]
    if call.answer is None and not response.content:
        return []
    assert response.headers["content-type"].startswith("application/json")
    return [response.json()]


def _check_shape(call: Call, objects: list[dict[str, Any]]) -> None:
    assert not [o for o in objects if "error" in o], objects
    if call.answer is not None:
        (answer,) = objects
        jsonschema.validate(answer, call.answer)
    for line in objects if call.each_line else ():
        jsonschema.validate(line, call.each_line)
    if call.last_line is not None:
        jsonschema.validate(objects[-1], call.last_line)
    for name in call.checks:
        CHECKS[name](objects[0])


def _first_call_id(objects: list[dict[str, Any]]) -> str | None:
    for obj in objects:
        for call in (obj.get("message") or {}).get("tool_calls") or []:
            return call.get("id")
    return None


def _check_upstream(call: Call, body: dict[str, Any], double: OllamaDouble, seen: int) -> None:
    """What reached Ollama is what the client sent."""
    if call.path in ("/api/chat", "/api/generate") and (body.get("messages") or body.get("prompt")):
        (record,) = double.generations[seen:]
        for name in ("options", "keep_alive", "think", "format", "tools", "raw", "prompt"):
            if name in body:
                assert record.body.get(name) == body[name], f"{name} changed on the way"
        if "messages" in body:
            assert_same_messages(record.body["messages"], body["messages"])
            for sent, received in zip(body["messages"], record.body["messages"], strict=True):
                for field in ("tool_call_id", "tool_name", "images"):
                    assert received.get(field) == sent.get(field), f"{field} changed"
                sent_ids = [c.get("id") for c in sent.get("tool_calls") or []]
                got_ids = [c.get("id") for c in received.get("tool_calls") or []]
                if any(sent_ids):
                    assert got_ids == sent_ids, "tool call ids must reach Ollama unchanged"
    if call.path == "/api/embed":
        assert double.embeddings[-1].inputs == body["input"]
    if call.path == "/api/pull":
        assert double.find_model(body["model"]) is not None, "the pulled model is installed"
    if call.path == "/api/delete":
        assert double.find_model(body["model"]) is None, "the deleted model is gone"


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[s.id for s in SEQUENCES])
def test_replay(sequence: Sequence, llmserve: Deployment, double: OllamaDouble) -> None:
    key = llmserve.admin_key if sequence.moment == "admin" else llmserve.user_key
    call_id: str | None = None
    with httpx.Client(base_url=llmserve.base_url, trust_env=False, timeout=30) as http:
        for call in sequence.calls:
            if call.model_calls is not None:
                script = {"name": call.model_calls.name, "arguments": call.model_calls.arguments}
                double.enqueue(Script(tool_calls=[script]))
            body = _with_call_id(call.body, call_id)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            authorization = _authorization(call, key)
            if authorization is not None:
                headers["Authorization"] = authorization
            seen = len(double.generations)
            response = http.request(
                call.method,
                call.path,
                content=json.dumps(body) if body is not None else None,
                headers=headers,
            )
            if llmserve.auth_required and authorization is None:
                # The client sends no key here: Ollama's error object, which it reads as a failure.
                assert response.status_code == 401, (call.what, response.text)
                assert list(response.json()) == ["error"]
                continue
            assert response.status_code == 200, (call.what, response.status_code, response.text)
            objects = _objects(call, response)
            _check_shape(call, objects)
            if body is not None:
                _check_upstream(call, body, double, seen)
                if "model" in body and objects and "model" in objects[0]:
                    assert objects[0]["model"] == body["model"], "the model is echoed as sent"
            call_id = _first_call_id(objects) or call_id
