"""Ollama's wire objects for models: ``/api/tags`` and ``/api/ps`` items, ``/api/show``
answers, pull and create progress objects — built from the domain types, in Ollama's key
order, with its conventions (digests without ``sha256:``, Go's zero time for an unknown date,
empty fields left out where Ollama leaves them out).

An engine that speaks Ollama's language hands its own objects over (``native``); they go out
as they came, newer fields included.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from llmserve.api.ollama_wire import rfc3339
from llmserve.domain import ModelCard, ModelInfo, PullProgress, RunningModel

JSON = "application/json; charset=utf-8"
#: Ollama's ``details`` keys, in its order (``families`` is null when unknown, the rest "").
DETAILS = ("parent_model", "format", "family", "families", "parameter_size", "quantization_level")


def json_response(payload: Any) -> Response:
    return Response(orjson.dumps(payload), media_type=JSON)


def newest_first(info: ModelInfo) -> float:
    """Sort key for ``/api/tags``: newest ``modified_at`` first, unknown last."""
    return -info.modified_at.timestamp() if info.modified_at is not None else float("inf")


def bare_digest(value: str | None) -> str:
    """Ollama lists digests as 64 hex digits, without ``sha256:``."""
    return (value or "").removeprefix("sha256:")


def details_object(details: dict[str, object]) -> dict[str, object]:
    """Ollama's ``details``: its keys only (a backend's own, such as a file path, stay out)."""
    out = {key: details.get(key, None if key == "families" else "") for key in DETAILS}
    for key in ("context_length", "embedding_length"):
        if details.get(key):
            out[key] = details[key]
    return out


def tags_item(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "model": info.name,
        "modified_at": rfc3339(info.modified_at),
        "size": info.size,
        "digest": bare_digest(info.digest),
        "details": details_object(info.details),
    }


def ps_item(model: RunningModel) -> dict[str, Any]:
    if model.native is not None:
        return model.native
    return {
        "name": model.name,
        "model": model.name,
        "size": model.size,
        "digest": bare_digest(model.digest),
        "details": details_object(model.details),
        "expires_at": rfc3339(model.expires_at),
        "size_vram": model.size_vram,
        "context_length": model.context_length or 0,
    }


def show_object(card: ModelCard) -> dict[str, Any]:
    """Ollama's ``/api/show`` answer, in its order; empty texts left out, as Ollama does."""
    if card.native is not None:
        return card.native
    texts = {"license": card.license, "parameters": card.parameters, "template": card.template}
    out: dict[str, Any] = {key: value for key, value in texts.items() if value}
    if card.system:
        out["system"] = card.system
    out["details"] = details_object(card.details)
    out["model_info"] = card.model_info
    if card.capabilities:
        out["capabilities"] = list(card.capabilities)
    out["modified_at"] = rfc3339(card.modified_at)
    return out


def progress_object(item: PullProgress) -> dict[str, Any]:
    """A progress object: ``status``, then ``digest``, ``total``, ``completed`` unless empty."""
    out: dict[str, Any] = {"status": item.status}
    for key in ("digest", "total", "completed"):
        value = getattr(item, key)
        if value:
            out[key] = value
    return out
