"""``/api/embed`` and the legacy ``/api/embeddings`` answer like Ollama, deterministically."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.fakes.double_testing import BUILT_IN, JSON_UTF8
from tests.fakes.ollama_double import OllamaDouble
from tests.fakes.ollama_embed import embed_vector, raw_vector


def embed(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/api/embed", json={"model": BUILT_IN, **body})


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


def test_embed_answers_normalised_deterministic_vectors(
    client: httpx.Client, double: OllamaDouble
) -> None:
    response = embed(client, input=["hello", "world", "hello"])
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_UTF8
    body = response.json()
    assert list(body) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert body["model"] == BUILT_IN
    first, second, third = body["embeddings"]
    assert len(first) == 16 and first == third and first != second
    for vector in body["embeddings"]:
        assert norm(vector) == pytest.approx(1.0, abs=1e-6)
        assert all(-1 <= value <= 1 for value in vector)
    assert first == embed_vector("hello", 16)
    assert body["prompt_eval_count"] == 3 and body["total_duration"] >= body["load_duration"] > 0
    assert embed(client, input="hello").json()["embeddings"] == [first]
    assert double.loaded == ["llama3.2:latest"]


def test_dimension_is_per_model_and_dimensions_truncates_then_renormalises(
    client: httpx.Client, double: OllamaDouble
) -> None:
    double.add_model("nomic-embed-text", capabilities=("embedding",), embedding_dim=8)
    (small,) = embed(client, model="nomic-embed-text", input="x").json()["embeddings"]
    assert len(small) == 8
    (full,) = embed(client, input="x").json()["embeddings"]
    (cut,) = embed(client, input="x", dimensions=4).json()["embeddings"]
    assert len(cut) == 4 and norm(cut) == pytest.approx(1.0, abs=1e-6)
    scale = norm(full[:4])
    assert cut == pytest.approx([value / scale for value in full[:4]], abs=1e-6)
    for ignored in (0, -3, 16, 99):
        assert embed(client, input="x", dimensions=ignored).json()["embeddings"] == [full]


@pytest.mark.parametrize("empty", ["", [], None])
def test_empty_input_gives_no_embeddings(
    client: httpx.Client, double: OllamaDouble, empty: Any
) -> None:
    response = embed(client, input=empty)
    assert response.json() == {"model": BUILT_IN, "embeddings": []}
    assert double.embeddings[-1].inputs == []


@pytest.mark.parametrize("bad", [["a", 1], 5, {"text": "a"}, [None], True])
def test_non_string_input_is_400(client: httpx.Client, bad: Any) -> None:
    response = embed(client, input=bad)
    assert (response.status_code, response.json()) == (400, {"error": "invalid input type"})


def test_embed_model_and_field_errors(client: httpx.Client, double: OllamaDouble) -> None:
    missing = client.post("/api/embed", json={"model": "nosuch", "input": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nosuch' not found"})
    empty = client.post("/api/embed", json={"input": "x"})
    assert (empty.status_code, empty.json()) == (404, {"error": "model '' not found"})
    invalid = client.post("/api/embed", json={"model": "a//b", "input": "x"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid model name"})
    # The input is checked before the model is looked up.
    both = client.post("/api/embed", json={"model": "nosuch", "input": [1]})
    assert both.json() == {"error": "invalid input type"}
    dims = embed(client, input="x", dimensions="4")
    assert dims.json() == {
        "error": "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions "
        "of type int"
    }
    assert embed(client, input="x", keep_alive="5").status_code == 400
    options = embed(client, input="x", options={"num_ctx": "big"})
    assert (options.status_code, options.json()) == (
        500,
        {"error": 'option "num_ctx" must be of type integer'},
    )
    assert client.post("/api/embed", content=b"").json() == {"error": "missing request body"}
    assert double.embeddings == []


def test_embed_requests_are_recorded_as_received(
    client: httpx.Client, double: OllamaDouble
) -> None:
    body = {
        "model": "LLAMA3.2",
        "input": ["a", "b"],
        "truncate": False,
        "dimensions": 4,
        "options": {"num_ctx": 512},
        "keep_alive": "1m",
    }
    sent = client.post("/api/embed", json=body).json()
    (record,) = double.embeddings
    assert (record.path, record.model, record.inputs) == ("/api/embed", "LLAMA3.2", ["a", "b"])
    assert record.body == body and record.embeddings == sent["embeddings"]
    assert (record.dimensions, record.truncate, record.options) == (4, False, {"num_ctx": 512})
    double.reset()
    assert double.embeddings == []


def test_legacy_embeddings_are_raw_and_unnormalised(
    client: httpx.Client, double: OllamaDouble
) -> None:
    response = client.post("/api/embeddings", json={"model": BUILT_IN, "prompt": "hello"})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["embedding"]
    vector = body["embedding"]
    assert len(vector) == 16 and abs(norm(vector) - 1.0) > 1e-3
    assert vector == pytest.approx(raw_vector("hello", 16), rel=1e-6)
    scale = norm(vector)
    assert embed_vector("hello", 16) == pytest.approx([v / scale for v in vector], abs=1e-6)
    empty = client.post("/api/embeddings", json={"model": BUILT_IN, "prompt": ""})
    assert empty.json() == {"embedding": []}
    record = double.embeddings[0]
    assert (record.path, record.inputs, record.embeddings) == (
        "/api/embeddings",
        ["hello"],
        [vector],
    )


def test_legacy_embeddings_errors(client: httpx.Client) -> None:
    no_model = client.post("/api/embeddings", json={"prompt": "x"})
    assert (no_model.status_code, no_model.json()) == (400, {"error": "model is required"})
    missing = client.post("/api/embeddings", json={"model": "nosuch", "prompt": "x"})
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": 'model "nosuch" not found, try pulling it first'},
    )
    wrong = client.post("/api/embeddings", json={"model": BUILT_IN, "prompt": ["x"]})
    assert wrong.json() == {
        "error": "json: cannot unmarshal array into Go struct field EmbeddingRequest.prompt "
        "of type string"
    }
