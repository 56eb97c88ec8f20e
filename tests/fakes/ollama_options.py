"""Checks Ollama makes after decoding, where its messages come from elsewhere: the runner's
``format`` check, option types from the scheduler, ``top_logprobs`` bounds, and ``num_predict``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tests.fakes.ollama_decode import RequestError, is_number


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string: double quotes, backslash escapes, printable Unicode kept."""
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
    named.update({"\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"})
    out = []
    for char in text:
        if char in named:
            out.append(named[char])
        elif char.isprintable() or char == " ":
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def check_format(value: Any) -> None:
    """``format`` must be ``"json"`` or a JSON-schema object; anything else fails with a 500
    before any output, quoting the raw JSON the way Go's ``%q`` does (``"\\"xml\\""``)."""
    if value in ("", "json") or isinstance(value, dict):
        return
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    raise RequestError(
        500, f'invalid format: {go_quote(raw)}; expected "json" or a valid JSON Schema object'
    )


def check_top_logprobs(request: Mapping[str, Any]) -> None:
    value = request.get("top_logprobs", 0)
    if value < 0 or value > 20:
        raise RequestError(400, "top_logprobs must be between 0 and 20")


_INT_OPTIONS = {
    "num_predict", "num_ctx", "seed", "top_k", "num_keep", "repeat_last_n",
    "num_batch", "num_gpu", "main_gpu", "num_thread",
}  # fmt: skip
_FLOAT_OPTIONS = {
    "temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
    "presence_penalty", "frequency_penalty",
}  # fmt: skip
_BOOL_OPTIONS = {"use_mmap", "numa", "penalize_newline"}


def check_options(options: Mapping[str, Any]) -> None:
    """Type-check known runner options (500 from Ollama's scheduling step); ignore unknown ones."""
    for key, value in options.items():
        if value is None:
            continue
        if key in _INT_OPTIONS and not is_number(value):
            raise RequestError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and not is_number(value):
            raise RequestError(500, f'option "{key}" must be of type float32')
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise RequestError(500, f'option "{key}" must be of type boolean')
        if key == "stop" and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            raise RequestError(500, f'option "{key}" must be of an array of strings')


def num_predict(options: Mapping[str, Any]) -> int | None:
    """The positive ``num_predict`` limit, or ``None`` when unlimited (absent, 0, -1, -2)."""
    value = options.get("num_predict")
    if is_number(value) and int(value) > 0:
        return int(value)
    return None
