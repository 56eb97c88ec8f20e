"""Scripted tool calls in the shape each Ollama generation sends them.

A call is always whole (arguments an object in the scripted key order, never a string, no
``type`` field). The three styles:

* ``current`` (0.17 and later): ``{"id": "call_<8 of a-z0-9>", "function": {"index": N, "name",
  "arguments"}}``;
* ``index`` (0.5 to 0.12): no ``id``; ``index`` is ``omitempty`` in Go, so the first call has none;
* ``bare`` (0.3 and 0.4): ``{"function": {"name", "arguments"}}``.

``N`` counts the calls of one answer from 0. Ids are random in Ollama; here they are derived from
a per-double counter so a run is reproducible while every call still gets a different id.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from typing import Any

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
CALL_ID = re.compile(r"call_[a-z0-9]{8}")
_counter = itertools.count(1)


def call_id() -> str:
    """A fresh ``call_`` + 8 lower-case letters/digits id, like Ollama's ``toolCallId``."""
    digest = hashlib.sha256(f"ollama-double-call-{next(_counter)}".encode()).digest()
    return "call_" + "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in digest[:8])


def render_call(call: dict[str, Any], index: int, style: str) -> dict[str, Any]:
    """One scripted ``{"name", "arguments"}`` call as it goes out on the wire."""
    function: dict[str, Any] = {}
    if style == "current" or (style == "index" and index):
        function["index"] = index
    function["name"] = call["name"]
    function["arguments"] = copy.deepcopy(call.get("arguments", {}))
    if style == "current":
        return {"id": call_id(), "function": function}
    return {"function": function}


def render_calls(calls: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    return [render_call(call, index, style) for index, call in enumerate(calls)]


def group_calls(calls: list[dict[str, Any]], chunks: str) -> list[list[dict[str, Any]]]:
    """The tool-call chunks: one per call (``each``) or one with every call (``together``)."""
    if not calls:
        return []
    if chunks == "together":
        return [calls]
    return [[call] for call in calls]
