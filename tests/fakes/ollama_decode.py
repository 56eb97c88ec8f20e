"""Request decoding that fails the way Ollama's Go code does.

Gin's ``ShouldBindJSON`` decodes the body with ``encoding/json`` whatever the Content-Type says:
an empty body is ``io.EOF`` (400 ``missing request body``), only the first JSON value is read,
unknown keys are ignored, keys match fields case-insensitively, ``null`` leaves a field at its zero
value, and a value of the wrong type is a 400 naming the Go struct field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

FieldCheck = Callable[[Any, str], None]


class RequestError(Exception):
    """A request Ollama would refuse: ``status`` and the message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def type_error(value: Any, where: str, go_type: str) -> RequestError:
    """Go's ``*json.UnmarshalTypeError`` for ``value`` found at ``where`` (``Struct.path``)."""
    kind = _json_kind(value)
    return RequestError(
        400, f"json: cannot unmarshal {kind} into Go struct field {where} of type {go_type}"
    )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise type_error(value, where, "string")


def boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise type_error(value, where, "bool")


def integer(value: Any, where: str) -> None:
    if not is_number(value):
        raise type_error(value, where, "int")
    if isinstance(value, float):  # Go's ParseInt refuses "1.5" and "1.0" alike, naming them
        raise RequestError(
            400,
            f"json: cannot unmarshal number {json.dumps(value)} into Go struct field {where} "
            "of type int",
        )


def obj(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise type_error(value, where, "map[string]interface {}")


def anything(value: Any, where: str) -> None:
    """``json.RawMessage`` or a type with its own ``UnmarshalJSON``: checked by the handler."""


def list_of(item: FieldCheck, go_type: str) -> FieldCheck:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise type_error(value, where, go_type)
        for element in value:
            if element is not None:
                item(element, where)

    return check


def _relabel(where: str, struct_name: str | None) -> str:
    """Where a nested struct's fields are reported: Go names the innermost struct type and the
    full path (``Tool.tools.function``); behind a custom ``UnmarshalJSON`` (``struct_name=None``,
    e.g. ``api.Message``) the outer struct's name stays (``ChatRequest.messages.content``)."""
    if struct_name is None:
        return where
    return f"{struct_name}.{where.partition('.')[2]}"


def struct(fields: Mapping[str, FieldCheck], go_type: str, struct_name: str | None) -> FieldCheck:
    """A nested Go struct such as ``api.ToolFunction`` (``struct_name="ToolFunction"``)."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise type_error(value, where, go_type)
        _check_fields(value, fields, _relabel(where, struct_name))

    return check


def struct_list(
    fields: Mapping[str, FieldCheck], go_type: str, struct_name: str | None = None
) -> FieldCheck:
    """A list of Go structs, e.g. ``[]api.Message``."""
    element = struct(fields, go_type.removeprefix("[]"), struct_name)

    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise type_error(value, where, go_type)
        for item in value:
            if item is not None:
                element(item, where)

    return check


def _check_fields(value: dict[str, Any], fields: Mapping[str, FieldCheck], where: str) -> None:
    lower = {name.lower(): name for name in fields}
    for key, item in value.items():
        name = key if key in fields else lower.get(key.lower())
        if name is not None and item is not None:
            fields[name](item, f"{where}.{name}")


_SYNTAX_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
}


def _syntax_message(error: json.JSONDecodeError) -> str:
    text = error.doc
    if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated"):
        return "unexpected EOF"
    char = text[error.pos]
    if error.msg.startswith("Invalid control character"):
        return f"invalid character {char!r} in string literal"
    context = _SYNTAX_CONTEXT.get(error.msg, "looking for beginning of value")
    return f"invalid character {char!r} {context}"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def decode_body(body: bytes, fields: Mapping[str, FieldCheck], struct: str) -> dict[str, Any]:
    """Decode ``body`` into the fields of Go struct ``api.<struct>``; raise :class:`RequestError`.

    Returns only the known fields that were present and not ``null``, under their canonical names.
    """
    text = body.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise RequestError(400, "missing request body")
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    try:
        value, _ = decoder.raw_decode(text, start)  # like json.Decoder: trailing data is not read
    except json.JSONDecodeError as exc:
        raise RequestError(400, _syntax_message(exc)) from None
    except ValueError as exc:  # NaN / Infinity, which Go does not accept
        message = f"invalid character {str(exc)[0]!r} looking for beginning of value"
        raise RequestError(400, message) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(
            400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.{struct}"
        )
    _check_fields(value, fields, struct)
    lower = {name.lower(): name for name in fields}
    result: dict[str, Any] = {}
    for key, item in value.items():
        name = key if key in fields else lower.get(key.lower())
        if name is not None and item is not None:
            result[name] = item
    return result


def received_json(body: bytes) -> Any:
    """The first JSON value of ``body`` exactly as sent (``None`` when there is none)."""
    text = body.decode("utf-8", errors="replace")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, len(text) - len(text.lstrip()))
    except ValueError:
        return None
    return value


_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "m": 60,
    "h": 3600,
}


def parse_keep_alive(value: Any) -> float:
    """Seconds from a ``keep_alive`` value (number of seconds or Go duration); -1 means forever.

    Raises :class:`RequestError` 400 with Go's messages, e.g. ``time: missing unit in duration
    "300"`` for a unit-less string.
    """
    if is_number(value):
        return -1.0 if value < 0 else float(value)
    if not isinstance(value, str):
        raise RequestError(400, f"Unsupported type: '{_json_kind(value)}'")
    quoted = json.dumps(value, ensure_ascii=False)
    if value in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.fullmatch(value):
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", value):
            raise RequestError(400, f"time: missing unit in duration {quoted}")
        raise RequestError(400, f"time: invalid duration {quoted}")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    return -1.0 if value.startswith("-") and seconds > 0 else seconds


THINK_LEVELS = ("high", "medium", "low", "max")


def check_think(value: Any) -> bool:
    """Validate ``think`` (bool or level string); return whether thinking was asked for."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return True
    shown = json.dumps(value, ensure_ascii=False)
    raise RequestError(
        400, f'invalid think value: {shown} (must be "high", "medium", "low", true, or false)'
    )
