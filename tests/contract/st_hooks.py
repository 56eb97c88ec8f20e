"""Schemathesis hooks for the contract test (``SCHEMATHESIS_HOOKS``).

Installed models. A generated model name is almost never one the server has, so almost every
generation would end in 404 ``model_not_found`` and the streams would never be answered. Half
of the valid cases (chosen by a hash of the case, so a run is repeatable) get the name of an
installed model (``CONTRACT_MODELS``, comma-separated) in every field the document marks as a
model name (``format: model-name``): in the body, the path or the query, on any operation; the
document's examples get one always. On an operation that documents a stream, each valid case
also sets its boolean ``stream`` field, true for half of them (the examples keep theirs). Cases
meant to be invalid are left alone.

Answers. Each answer's operation, status and media type is written, one JSON line each, to
``CONTRACT_ANSWERS`` when it is set: the test reads it to see that each operation that
documents a stream was answered with both of its media types.

Rules JSON Schema cannot state. Three rules of a request with tools need "a value found in
another field" or "unique by one member", which JSON Schema has no way to say: a named
``tool_choice`` names one of the ``tools``, no two tools share a name, and a tool's result
answers a call made earlier in the conversation (Responses' ``function_call_output`` a
``function_call`` with its ``call_id``; Anthropic's ``tool_result`` a ``tool_use`` with its
``id``). The schemas say so in prose; the generation service refuses all three (400) whatever
the face. A fourth is stated only as an annotation, which generators do not honour: a
Responses ``function_call``'s ``arguments`` is a JSON object in a string
(``contentMediaType`` and ``contentSchema``). Generated bodies that break them are not sent,
on any operation and in every phase (fuzzing calls ``filter_body``; the coverage phase calls
only ``filter_case``): every other rule must be in the schema itself.
"""

from __future__ import annotations

import json
import os
import zlib
from functools import cache
from typing import Any

import schemathesis

#: The ``format`` of a model name in the document (``llmserve.api.schemas.MODEL_NAME_FORMAT``).
MODEL_NAME_FORMAT = "model-name"
MODELS = tuple(name for name in os.environ.get("CONTRACT_MODELS", "").split(",") if name)
ANSWERS = os.environ.get("CONTRACT_ANSWERS")
_LOCATIONS = {"path": "path_parameters", "query": "query", "header": "headers"}
#: The media types of a stream.
STREAMS = ("text/event-stream", "application/x-ndjson")


# -- installed models ---------------------------------------------------------------------------


def _resolved(schema: Any, document: dict[str, Any]) -> Any:
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        found: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            found = found.get(part, {}) if isinstance(found, dict) else {}
        schema = found
    return schema


def _names_a_model(schema: Any, document: dict[str, Any]) -> bool:
    """``schema`` (or one of its alternatives) is a string with the model-name format."""
    schema = _resolved(schema, document)
    if not isinstance(schema, dict):
        return False
    if schema.get("format") == MODEL_NAME_FORMAT:
        return True
    return any(
        _names_a_model(option, document)
        for keyword in ("anyOf", "oneOf", "allOf")
        for option in schema.get(keyword, ())
    )


def _body_fields(schema: Any, document: dict[str, Any], wanted: Any) -> frozenset[str]:
    """The members of a body object whose schema is ``wanted`` (its own properties, and those
    of the schemas it combines)."""
    schema = _resolved(schema, document)
    if not isinstance(schema, dict):
        return frozenset()
    found = {
        name for name, member in schema.get("properties", {}).items() if wanted(member, document)
    }
    for keyword in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(keyword, ()):
            found |= _body_fields(option, document, wanted)
    return frozenset(found)


def _is_switch(schema: Any, document: dict[str, Any]) -> bool:
    schema = _resolved(schema, document)
    return isinstance(schema, dict) and (
        schema.get("type") == "boolean"
        or any(_is_switch(option, document) for option in schema.get("anyOf", ()))
    )


def _fields(operation: Any, wanted: Any) -> tuple[tuple[str, str], ...]:
    """``(container, name)`` of every field of ``operation`` whose schema is ``wanted``."""
    document: dict[str, Any] = operation.schema.raw_schema
    raw = document["paths"][operation.path][operation.method.lower()]
    found = set()
    for parameter in (_resolved(p, document) for p in raw.get("parameters", ())):
        if parameter.get("in") in _LOCATIONS and wanted(parameter.get("schema"), document):
            found.add((_LOCATIONS[parameter["in"]], parameter["name"]))
    for media in raw.get("requestBody", {}).get("content", {}).values():
        found |= {("body", name) for name in _body_fields(media.get("schema"), document, wanted)}
    return tuple(sorted(found))


@cache
def _model_fields(operation: Any) -> tuple[tuple[str, str], ...]:
    return _fields(operation, _names_a_model)


@cache
def _stream_switches(operation: Any) -> tuple[tuple[str, str], ...]:
    """The boolean ``stream`` fields of an operation that documents a stream."""
    document: dict[str, Any] = operation.schema.raw_schema
    raw = document["paths"][operation.path][operation.method.lower()]
    answers = raw.get("responses", {}).get("200", {}).get("content", {})
    if not any(media in STREAMS for media in answers):
        return ()
    return tuple(field for field in _fields(operation, _is_switch) if field[1] == "stream")


def _fingerprint(case: Any) -> int:
    content = [case.path_parameters, case.query, case.body]
    return zlib.crc32(json.dumps(content, sort_keys=True, default=repr).encode())


def _with_installed_models(case: Any, *, always: bool = False) -> Any:
    """Half of the valid cases (all with ``always``) name installed models; each valid case of
    an operation that streams asks for a stream or not (unless ``always``: an example says)."""
    meta = case.meta
    if not MODELS or meta is None or not meta.generation.mode.is_positive:
        return case
    fingerprint = _fingerprint(case)
    if always or fingerprint % 2 == 0:
        for container, name in _model_fields(case.operation):
            _set(case, container, name, MODELS[(fingerprint // 2) % len(MODELS)])
    if not always:
        for container, name in _stream_switches(case.operation):
            _set(case, container, name, bool(fingerprint // 4 % 2))
    return case


def _set(case: Any, container: str, name: str, value: Any) -> None:
    if container == "body":
        if isinstance(case.body, dict):
            case.body = {**case.body, name: value}
        return
    values = getattr(case, container)
    if isinstance(values, dict):
        setattr(case, container, {**values, name: value})


# -- what JSON Schema cannot state ----------------------------------------------------------------


def _name(item: Any) -> Any:
    if not isinstance(item, dict):
        return None
    function = item.get("function")
    if isinstance(function, dict) and "name" in function:
        return function["name"]
    return item.get("name")


def _json_object(text: Any) -> bool:
    """``text`` is a JSON object in a string (blank is read as ``{}``)."""
    if not isinstance(text, str):
        return True  # not a string: the schema refuses it already
    try:
        return not text.strip() or isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _results_answer_calls(body: dict[str, Any]) -> bool:
    items = body.get("input")
    if isinstance(items, list):  # Responses
        calls: set[Any] = set()
        for item in items:
            if isinstance(item, dict) and item.get("type") == "function_call":
                if not _json_object(item.get("arguments")):
                    return False
                calls.add(repr(item.get("call_id")))
            elif (
                isinstance(item, dict)
                and item.get("type") == "function_call_output"
                and repr(item.get("call_id")) not in calls
            ):
                return False
    messages = body.get("messages")
    uses: set[Any] = set()
    for message in messages if isinstance(messages, list) else ():  # Anthropic
        blocks = message.get("content") if isinstance(message, dict) else None
        blocks = [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
        for block in blocks:
            if block.get("type") == "tool_result" and repr(block.get("tool_use_id")) not in uses:
                return False
        uses.update(repr(b.get("id")) for b in blocks if b.get("type") == "tool_use")
    return True


def _tools_agree(body: dict[str, Any]) -> bool:
    if not isinstance(body.get("tools"), list):
        return True
    names = [_name(tool) for tool in body["tools"]]
    if len(set(map(repr, names))) != len(names):
        return False
    choice = body.get("tool_choice")
    return not isinstance(choice, dict) or _name(choice) in names


def _agree(body: Any) -> bool:
    return not isinstance(body, dict) or (_results_answer_calls(body) and _tools_agree(body))


# -- the hooks ----------------------------------------------------------------------------------


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    return _agree(body)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return _agree(case.body)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    return _with_installed_models(case)


@schemathesis.hook
def before_add_examples(context: Any, examples: list[Any]) -> None:
    examples[:] = [_with_installed_models(case, always=True) for case in examples]


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if ANSWERS is None:
        return
    media = (response.headers.get("content-type") or [""])[0].partition(";")[0].strip()
    answer = {
        "method": case.operation.method.upper(),
        "path": case.operation.path,
        "status": response.status_code,
        "media": media,
    }
    with open(ANSWERS, "a", encoding="utf-8") as sink:
        sink.write(json.dumps(answer) + "\n")
