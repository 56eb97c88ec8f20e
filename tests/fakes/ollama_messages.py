"""How Ollama decodes the conversation parts of a request: messages, images, tool calls, tools.

Everything here fails at JSON binding time, so it is a 400 with Go's own message:

* ``content`` is a Go ``string``: an OpenAI-style array of parts is
  ``json: cannot unmarshal array into Go struct field ChatRequest.messages.content of type string``
  (``api.Message`` has its own ``UnmarshalJSON``, so Go names the outer struct in the path);
* an image is ``[]byte``, i.e. standard base64 with padding: anything else, a ``data:`` URL
  included, is ``illegal base64 data at input byte N``;
* tool-call ``arguments`` decode into an ordered map, which takes nothing but a JSON object or
  ``null`` (a JSON string is refused with the map parser's own message);
* ``tools`` follow ``api.Tool``, which has no decoder of its own, so Go names the innermost
  struct (``json: cannot unmarshal number into Go struct field ToolFunction.tools.function.name
  of type string``).
"""

from __future__ import annotations

import string as _chars
from typing import Any

from tests.fakes.ollama_decode import (
    FieldCheck,
    RequestError,
    anything,
    integer,
    list_of,
    string,
    struct,
    struct_list,
    type_error,
)

_BASE64 = frozenset((_chars.ascii_letters + _chars.digits + "+/").encode())
_NEWLINES = (0x0A, 0x0D)
_PAD = 0x3D  # "="

# Ollama's ordered map (tool arguments, tool parameter properties) takes an object or null only.
NOT_AN_OBJECT = "Value looks like object, but can't find closing '}' symbol"


def base64_error_offset(text: str) -> int | None:
    """Where Go's ``base64.StdEncoding.Decode`` fails on ``text`` (``None`` when it is valid).

    The same quantum-by-quantum walk as Go: ``\\r`` and ``\\n`` are skipped, padding is required,
    and the offset is the one Go's ``CorruptInputError`` reports.
    """
    src = text.encode()
    si = 0
    while si < len(src):
        j = 0
        while j < 4:
            if si == len(src):
                return None if j == 0 else si - j
            char = src[si]
            si += 1
            if char in _BASE64:
                j += 1
                continue
            if char in _NEWLINES:
                continue
            if char != _PAD or j < 2:
                return si - 1
            if j == 2:  # a second "=" must follow, after any newlines
                while si < len(src) and src[si] in _NEWLINES:
                    si += 1
                if si == len(src):
                    return len(src)
                if src[si] != _PAD:
                    return si - 1
                si += 1
            while si < len(src) and src[si] in _NEWLINES:
                si += 1
            return si if si < len(src) else None  # anything after the padding is garbage
    return None


def _image(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise type_error(value, where, "api.ImageData")
    offset = base64_error_offset(value)
    if offset is not None:
        raise RequestError(400, f"illegal base64 data at input byte {offset}")


IMAGES = list_of(_image, "[]api.ImageData")


def _ordered_map(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise RequestError(400, NOT_AN_OBJECT)


TOOL_CALL_FUNCTION_FIELDS: dict[str, FieldCheck] = {
    "index": integer,
    "name": string,
    "arguments": _ordered_map,
}
TOOL_CALL_FIELDS: dict[str, FieldCheck] = {
    "id": string,
    "function": struct(TOOL_CALL_FUNCTION_FIELDS, "api.ToolCallFunction", None),
}
MESSAGE_FIELDS: dict[str, FieldCheck] = {
    "role": string,
    "content": string,
    "thinking": string,
    "images": IMAGES,
    "tool_calls": struct_list(TOOL_CALL_FIELDS, "[]api.ToolCall"),
    "tool_name": string,
    "tool_call_id": string,
}
MESSAGES = struct_list(MESSAGE_FIELDS, "[]api.Message")


PARAMETERS_FIELDS: dict[str, FieldCheck] = {
    "type": string,
    "$defs": anything,
    "items": anything,
    "required": list_of(string, "[]string"),
    "properties": _ordered_map,
}
TOOL_FUNCTION_FIELDS: dict[str, FieldCheck] = {
    "name": string,
    "description": string,
    "parameters": struct(PARAMETERS_FIELDS, "api.ToolFunctionParameters", "ToolFunctionParameters"),
}
TOOL_FIELDS: dict[str, FieldCheck] = {
    "type": string,
    "items": anything,
    "function": struct(TOOL_FUNCTION_FIELDS, "api.ToolFunction", "ToolFunction"),
}
_TOOL = struct(TOOL_FIELDS, "api.Tool", "Tool")


def tools_field(value: Any, where: str) -> None:
    """``api.Tools``, a list of ``api.Tool``."""
    if not isinstance(value, list):
        raise type_error(value, where, "api.Tools")
    for item in value:
        if item is not None:
            _TOOL(item, where)


def ollama_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The messages as Ollama decodes them: known fields only, under their canonical names
    (Go matches keys case-insensitively), ``null`` values and entries gone, roles lower-cased."""
    lower = {name.lower(): name for name in MESSAGE_FIELDS}
    result = []
    for message in messages:
        if message is None:
            continue
        decoded: dict[str, Any] = {}
        for key, value in message.items():
            name = key if key in MESSAGE_FIELDS else lower.get(key.lower())
            if name is not None and value is not None:
                decoded[name] = value
        if isinstance(decoded.get("role"), str):
            decoded["role"] = decoded["role"].lower()
        result.append(decoded)
    return result
