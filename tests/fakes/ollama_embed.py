"""``POST /api/embed`` and the legacy ``POST /api/embeddings`` for the Ollama double.

Vectors are deterministic: a model's raw vector for a text is :func:`raw_vector` (hash-based
values in [-1, 1], ``ModelEntry.embedding_dim`` of them, rounded to float32 like Ollama's). Then:

* ``/api/embed`` ``{model, input: str | [str], truncate?, dimensions?, options?, keep_alive?}``
  answers ``{"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}``,
  every vector L2-normalised; ``dimensions`` (when smaller than the model's) truncates, then
  normalises again. ``""``, ``[]`` or no input gives ``"embeddings": []`` (no metrics). A
  non-string item (or an input that is neither a string nor a list) is 400 ``invalid input type``;
  an empty model 404 ``model '' not found``, an invalid name 400 ``invalid model name``, an unknown
  model 404 ``model 'x' not found``. Any model can embed.
* ``/api/embeddings`` ``{model, prompt}`` answers ``{"embedding": [...]}``, the raw vector as
  float64 (e.g. ``0.12345679104328156``), **not** normalised; an empty prompt gives
  ``{"embedding": []}``; no model is 400 ``model is required``; an unknown model 404
  ``model "x" not found, try pulling it first``.

Every answered request is kept as an :class:`~tests.fakes.ollama_records.EmbedRecord`.
"""

from __future__ import annotations

import hashlib
import math
import struct as _struct
import time
from typing import Any

from tests.fakes.ollama_decode import (
    FieldCheck,
    RequestError,
    anything,
    boolean,
    decode_body,
    integer,
    obj,
    parse_keep_alive,
    received_json,
    string,
)
from tests.fakes.ollama_names import parse_model_name
from tests.fakes.ollama_options import (
    check_options,
    go_quote,
)
from tests.fakes.ollama_records import EmbedRecord
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_wire import Exchange

EMBED_FIELDS: dict[str, FieldCheck] = {
    "model": string,
    "input": anything,
    "keep_alive": anything,
    "truncate": boolean,
    "dimensions": integer,
    "options": obj,
}
EMBEDDINGS_FIELDS: dict[str, FieldCheck] = {
    "model": string,
    "prompt": string,
    "keep_alive": anything,
    "options": obj,
}


def _float32(value: float) -> float:
    """``value`` rounded to float32, as the shortest decimal that reads back as that float32
    (how Go prints a ``float32``)."""
    single = _struct.unpack("f", _struct.pack("f", value))[0]
    for digits in range(1, 10):
        short = float(f"{single:.{digits}g}")
        if _struct.unpack("f", _struct.pack("f", short))[0] == single:
            return short
    return single


def _widen(value: float) -> float:
    """The exact float64 of a float32 (the legacy endpoint converts before encoding)."""
    return float(_struct.unpack("f", _struct.pack("f", value))[0])


def raw_vector(text: str, dim: int) -> list[float]:
    """The model's own (unnormalised) vector for ``text``: ``dim`` values in [-1, 1]."""
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        for offset in range(0, len(digest), 4):
            (number,) = _struct.unpack(">I", digest[offset : offset + 4])
            values.append(number / 0xFFFFFFFF * 2 - 1)
        block += 1
    return [_float32(value) for value in values[:dim]]


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    scale = 1.0 / max(norm, 1e-12)
    return [_float32(value * scale) for value in vector]


def embed_vector(text: str, dim: int, dimensions: int | None = None) -> list[float]:
    """What ``/api/embed`` answers for ``text`` with a model of ``dim`` dimensions."""
    vector = normalise(raw_vector(text, dim))
    if dimensions is not None and 0 < dimensions < len(vector):
        vector = normalise(vector[:dimensions])
    return vector


def _inputs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RequestError(400, "invalid input type")


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


async def handle_embed(state: DoubleState, ex: Exchange) -> None:
    req = decode_body(ex.body, EMBED_FIELDS, "EmbedRequest")
    keep_alive = parse_keep_alive(req["keep_alive"]) if "keep_alive" in req else None
    model = req.get("model", "")
    if not model.strip():
        raise RequestError(404, f"model '{model}' not found")
    if parse_model_name(model) is None:
        raise RequestError(400, "invalid model name")
    inputs = _inputs(req.get("input"))
    entry = state.find_model(model)
    if entry is None:
        raise RequestError(404, f"model '{model}' not found")
    check_options(req.get("options", {}))
    loaded_ns = time.monotonic_ns()
    state.mark_loaded(entry, keep_alive)
    dimensions = req.get("dimensions")
    vectors = [embed_vector(text, entry.embedding_dim, dimensions) for text in inputs]
    state.record_embedding(
        EmbedRecord(ex.path, model, inputs, received_json(ex.body), req, vectors)
    )
    body: dict[str, Any] = {"model": model, "embeddings": vectors}
    if inputs:
        now = time.monotonic_ns()
        body["total_duration"] = max(now - ex.arrived_ns, 1)
        body["load_duration"] = max(loaded_ns - ex.arrived_ns, 1)
        body["prompt_eval_count"] = sum(_tokens(text) for text in inputs)
    await ex.json(200, body)


async def handle_embeddings(state: DoubleState, ex: Exchange) -> None:
    req = decode_body(ex.body, EMBEDDINGS_FIELDS, "EmbeddingRequest")
    keep_alive = parse_keep_alive(req["keep_alive"]) if "keep_alive" in req else None
    model = req.get("model", "")
    if not model.strip():
        raise RequestError(400, "model is required")
    if parse_model_name(model) is None:
        raise RequestError(400, "invalid model name")
    entry = state.find_model(model)
    if entry is None:
        raise RequestError(404, f"model {go_quote(model)} not found, try pulling it first")
    check_options(req.get("options", {}))
    state.mark_loaded(entry, keep_alive)
    prompt = req.get("prompt", "")
    vector = [_widen(value) for value in raw_vector(prompt, entry.embedding_dim)] if prompt else []
    inputs = [prompt] if prompt else []
    state.record_embedding(
        EmbedRecord(ex.path, model, inputs, received_json(ex.body), req, [vector] if prompt else [])
    )
    await ex.json(200, {"embedding": vector})
