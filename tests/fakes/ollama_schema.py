"""JSON text that satisfies a request's ``format``, for the double's structured answers.

Ollama turns ``format`` into a grammar, so a real model can only answer text that matches it.
The double answers a deterministic instance instead:

* ``"json"`` (or a schema that constrains nothing) gives :data:`JSON_ANSWER`;
* a schema gives a value that validates against it: objects carry every listed property (then any
  other required name), arrays ``max(minItems, 1)`` items (``prefixItems`` one each), strings the
  property's name (or ``"text"``; common ``format`` values get a matching example) within
  ``minLength``/``maxLength``, numbers and integers 1 or 1.5 moved into their bounds, booleans
  ``true``; ``const`` and the first ``enum`` value win; ``anyOf``/``oneOf`` take their first
  branch, ``allOf`` is merged, local ``$ref`` (``#/$defs/...``, ``#/definitions/...``) is
  followed. ``pattern`` and ``not`` are not honoured.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from typing import Any

JSON_ANSWER: dict[str, Any] = {"answer": "Hello, world!"}
STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}
_MAX_DEPTH = 32
_OBJECT_KEYS = ("properties", "required", "additionalProperties", "minProperties")
_ARRAY_KEYS = ("items", "prefixItems", "minItems", "maxItems")
_STRING_KEYS = ("minLength", "maxLength", "pattern", "format")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def answer_value(fmt: Any) -> Any:
    """The value the double answers for ``format`` (``"json"``, a schema, or anything else)."""
    if not isinstance(fmt, dict) or not _constrains(fmt):
        return copy.deepcopy(JSON_ANSWER)
    return SchemaInstance(fmt).build(fmt, None, 0)


def answer_text(fmt: Any) -> str:
    """:func:`answer_value` as JSON text, spaced like a model writes it."""
    return json.dumps(answer_value(fmt), ensure_ascii=False)


def split_tokens(text: str, parts: int = 4) -> list[str]:
    """``text`` cut into up to ``parts`` non-empty chunks, in order."""
    count = max(1, min(parts, len(text)))
    bounds = [round(i * len(text) / count) for i in range(count + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _constrains(schema: dict[str, Any]) -> bool:
    ignored = {"$schema", "$id", "title", "description", "$comment", "examples", "default"}
    return any(key not in ignored for key in schema)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **extra}
    if isinstance(base.get("properties"), dict) and isinstance(extra.get("properties"), dict):
        merged["properties"] = {**base["properties"], **extra["properties"]}
    required = list(base.get("required") or []) + list(extra.get("required") or [])
    if required:
        merged["required"] = list(dict.fromkeys(required))
    return merged


class SchemaInstance:
    """Builds instances against one root schema (for ``$ref`` resolution)."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref.lstrip("#").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def _flatten(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Follow ``$ref`` and fold ``allOf`` / the first ``anyOf``/``oneOf`` branch in."""
        for _ in range(_MAX_DEPTH):
            if isinstance(schema.get("$ref"), str):
                target = self._resolve(schema["$ref"])
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                schema = _merge(target if isinstance(target, dict) else {}, rest)
                continue
            if isinstance(schema.get("allOf"), list):
                rest = {k: v for k, v in schema.items() if k != "allOf"}
                for part in schema["allOf"]:
                    if isinstance(part, dict):
                        rest = _merge(rest, part)
                schema = rest
                continue
            for key in ("anyOf", "oneOf"):
                branches = schema.get(key)
                if isinstance(branches, list) and branches:
                    rest = {k: v for k, v in schema.items() if k != key}
                    first = branches[0] if isinstance(branches[0], dict) else {}
                    schema = _merge(rest, first)
                    break
            else:
                return schema
        return schema

    def build(self, schema: Any, name: str | None, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return name or "text"
        schema = self._flatten(schema)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return copy.deepcopy(schema["enum"][0])
        kind = self._kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "integer":
            return int(_number(schema, integer=True))
        if kind == "number":
            return _number(schema, integer=False)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return _string(schema, name)

    @staticmethod
    def _kind(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[0]
        if isinstance(kind, str):
            return kind
        for keys, inferred in (
            (_OBJECT_KEYS, "object"),
            (_ARRAY_KEYS, "array"),
            (_STRING_KEYS, "string"),
            (_NUMBER_KEYS, "number"),
        ):
            if any(key in schema for key in keys):
                return inferred
        return "string"

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for key, sub in properties.items():
                if sub is not False:
                    result[key] = self.build(sub, key, depth + 1)
        for key in schema.get("required") or []:
            if isinstance(key, str) and key not in result:
                extra = schema.get("additionalProperties")
                result[key] = self.build(extra if isinstance(extra, dict) else {}, key, depth + 1)
        return result

    def _array(self, schema: dict[str, Any], name: str | None, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [self.build(sub, name, depth + 1) for sub in prefix]
        count = max(int(schema.get("minItems") or 0), 1)
        if isinstance(schema.get("maxItems"), int):
            count = min(count, schema["maxItems"])
        items = schema.get("items")
        item_name = name[:-1] if name and name.endswith("s") and len(name) > 1 else name
        values = [self.build(items, item_name, depth + 1) for _ in range(count)]
        if schema.get("uniqueItems"):
            values = [_vary(value, index) for index, value in enumerate(values)]
        return values


def _vary(value: Any, index: int) -> Any:
    """Make the ``index``-th of several equal array items distinct (``uniqueItems``)."""
    if index == 0:
        return value
    if isinstance(value, str):
        return f"{value}{index + 1}"
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value + index
    return value


def _string(schema: dict[str, Any], name: str | None) -> str:
    text = STRING_FORMATS.get(str(schema.get("format")), name or "text")
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _number(schema: dict[str, Any], *, integer: bool) -> float | int:
    low, high = schema.get("minimum"), schema.get("maximum")
    low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if low_x is True:  # draft 4: a flag beside minimum/maximum
        low, low_x = None, low
    if high_x is True:
        high, high_x = None, high
    step = 1 if integer else 0.5
    lower = [v for v in (low,) if _real(v)] + [v + step for v in (low_x,) if _real(v)]
    upper = [v for v in (high,) if _real(v)] + [v - step for v in (high_x,) if _real(v)]
    value: float = 1 if integer else 1.5
    if lower:
        value = max(lower)
    if upper and value > min(upper):
        value = min(upper) if not lower else (max(lower) + min(upper)) / 2
    multiple = schema.get("multipleOf")
    if _real(multiple) and multiple > 0:
        value = math.ceil(value / multiple) * multiple
    if integer:
        value = math.ceil(value) if lower else math.floor(value)
    return int(value) if integer else float(value)


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
