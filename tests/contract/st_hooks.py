"""Schemathesis hooks for the contract test (``SCHEMATHESIS_HOOKS``).

Three rules of a request with tools cannot be stated in JSON Schema, which has no way to say "a
value found in another field" nor "unique by one member": a named ``tool_choice`` names one of
the ``tools``, no two tools share a name, and a tool's result answers a call made earlier in
the conversation (Responses' ``function_call_output`` a ``function_call`` with its
``call_id``; Anthropic's ``tool_result`` a ``tool_use`` with its ``id``). The schemas say so in
prose; the server refuses all three (400). A fourth is stated only as an annotation, which
generators do not honour: a Responses ``function_call``'s ``arguments`` is a JSON object in a
string (``contentMediaType`` and ``contentSchema``). Generated bodies that break them are not
sent, on any operation and in every phase (fuzzing calls ``filter_body``; the coverage phase
calls only ``filter_case``): every other rule must be in the schema itself.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


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


def _agree(body: Any) -> bool:
    return not isinstance(body, dict) or (_results_answer_calls(body) and _tools_agree(body))


def _tools_agree(body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("tools"), list):
        return True
    names = [_name(tool) for tool in body["tools"]]
    if len(set(map(repr, names))) != len(names):
        return False
    choice = body.get("tool_choice")
    return not isinstance(choice, dict) or _name(choice) in names


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    return _agree(body)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return _agree(case.body)
