"""``POST /api/generate`` and ``POST /api/chat`` for the Ollama double (ollama-api.md §1, §2, §4).

Validation happens in Ollama's order and fails before any byte is sent. Then the request consumes
one :class:`Script`, which decides the timing, the chunks and how the answer ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.ollama_decode import (
    FieldCheck,
    RequestError,
    anything,
    boolean,
    check_format,
    check_options,
    check_think,
    decode_body,
    integer,
    list_of,
    num_predict,
    obj,
    parse_keep_alive,
    string,
    struct_list,
)
from tests.fakes.ollama_names import parse_model_name
from tests.fakes.ollama_records import GenerationRecord, ModelEntry, Script
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_wire import Exchange, go_json, rfc3339

_COMMON: dict[str, FieldCheck] = {
    "model": string,
    "stream": boolean,
    "format": anything,
    "options": obj,
    "keep_alive": anything,
    "think": anything,
    "truncate": boolean,
    "shift": boolean,
    "logprobs": boolean,
    "top_logprobs": integer,
}
GENERATE_FIELDS: dict[str, FieldCheck] = {
    **_COMMON,
    "prompt": string,
    "suffix": string,
    "system": string,
    "template": string,
    "context": list_of(integer, "[]int"),
    "raw": boolean,
    "images": list_of(string, "[]api.ImageData"),
}
MESSAGE_FIELDS: dict[str, FieldCheck] = {
    "role": string,
    "content": string,
    "thinking": string,
    "images": list_of(string, "[]api.ImageData"),
    "tool_calls": anything,
    "tool_name": string,
    "tool_call_id": string,
}
CHAT_FIELDS: dict[str, FieldCheck] = {
    **_COMMON,
    "messages": struct_list(MESSAGE_FIELDS, "[]api.Message"),
    "tools": anything,
}


@dataclass
class Turn:
    """A validated generate/chat request, ready to be answered."""

    kind: str  # "generate" or "chat"
    model: str  # exactly as sent; echoed in every response object
    entry: ModelEntry
    request: dict[str, Any]
    keep_alive: float | None
    stream: bool
    raw: bool = False


def _installed(state: DoubleState, model: str) -> ModelEntry:
    if parse_model_name(model) is None:
        raise RequestError(400, "invalid model name")
    entry = state.find_model(model)
    if entry is None:
        raise RequestError(404, f"model '{model}' not found")
    return entry


def _common_checks(turn: Turn, think: bool) -> None:
    if think and "thinking" not in turn.entry.capabilities:
        raise RequestError(400, f'"{turn.model}" does not support thinking')
    if "format" in turn.request:
        check_format(turn.request["format"])
    check_options(turn.request.get("options", {}))


async def handle_generate(state: DoubleState, ex: Exchange) -> None:
    req = decode_body(ex.body, GENERATE_FIELDS, "GenerateRequest")
    keep_alive = parse_keep_alive(req["keep_alive"]) if "keep_alive" in req else None
    think = check_think(req["think"]) if "think" in req else False
    model = req.get("model", "")
    if not model:
        raise RequestError(404, "model '' not found")
    turn = Turn(
        "generate", model, _installed(state, model), req, keep_alive, req.get("stream", True)
    )
    turn.raw = bool(req.get("raw"))
    prompt = req.get("prompt", "")
    if not prompt and keep_alive == 0:
        await _load_or_unload(state, ex, turn, "unload")
        return
    if turn.raw and (req.get("template") or req.get("system") or req.get("context")):
        raise RequestError(400, "raw mode does not support template, system, or context")
    if req.get("suffix") and "insert" not in turn.entry.capabilities:
        raise RequestError(400, f'"{model}" does not support insert')
    _common_checks(turn, think)
    if not prompt:
        await _load_or_unload(state, ex, turn, "load")
        return
    await _answer(state, ex, turn, prompt)


async def handle_chat(state: DoubleState, ex: Exchange) -> None:
    req = decode_body(ex.body, CHAT_FIELDS, "ChatRequest")
    keep_alive = parse_keep_alive(req["keep_alive"]) if "keep_alive" in req else None
    think = check_think(req["think"]) if "think" in req else False
    model = req.get("model", "")
    if not model:
        raise RequestError(400, "model is required")
    turn = Turn("chat", model, _installed(state, model), req, keep_alive, req.get("stream", True))
    messages = [m for m in req.get("messages", []) if m is not None]
    if not messages and keep_alive == 0:
        await _load_or_unload(state, ex, turn, "unload")
        return
    _common_checks(turn, think)
    if not messages:
        await _load_or_unload(state, ex, turn, "load")
        return
    users = [m for m in messages if str(m.get("role", "")).lower() == "user"]
    await _answer(state, ex, turn, str(users[-1].get("content", "")) if users else "")


async def _load_or_unload(state: DoubleState, ex: Exchange, turn: Turn, reason: str) -> None:
    """A single object whatever ``stream`` says; no metrics. Not a generation record."""
    state.mark_loaded(turn.entry, 0 if reason == "unload" else turn.keep_alive)
    body: dict[str, Any] = {"model": turn.model, "created_at": rfc3339()}
    if turn.kind == "generate":
        body.update(response="", done=True, done_reason=reason)
    else:
        body.update(message={"role": "assistant", "content": ""}, done_reason=reason, done=True)
    await ex.json(200, body)


def _chunk(turn: Turn, text: str, thinking: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": turn.model, "created_at": rfc3339()}
    if turn.kind == "generate":
        body["response"] = "" if thinking else text
        if thinking:
            body["thinking"] = text
    else:
        message = {"role": "assistant", "content": "" if thinking else text}
        if thinking:
            message["thinking"] = text
        body["message"] = message
    body["done"] = False
    return body


def _final(
    turn: Turn, content: str, thinking: str, done_reason: str, metrics: dict[str, int]
) -> dict[str, Any]:
    """The ``done:true`` object: metrics omitted when zero, like Go's ``omitempty``."""
    body: dict[str, Any] = {"model": turn.model, "created_at": rfc3339()}
    metrics = {key: value for key, value in metrics.items() if value}
    if turn.kind == "generate":
        body["response"] = content
        if thinking:
            body["thinking"] = thinking
        body.update(done=True, done_reason=done_reason)
        if not turn.raw:
            tokens = metrics.get("prompt_eval_count", 0) + metrics.get("eval_count", 0)
            body["context"] = list(range(1, tokens + 1))
    else:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        body.update(message=message, done_reason=done_reason, done=True)
    body.update(metrics)
    return body


def _plan(script: Script, options: dict[str, Any]) -> tuple[list[tuple[bool, str]], str, str]:
    """The chunks to produce, how the answer ends (done/error/cut) and the done_reason."""
    sequence = [(True, t) for t in script.thinking] + [(False, t) for t in script.tokens]
    limit, done_reason = len(sequence), script.done_reason
    cap = num_predict(options)
    if cap is not None and cap < limit:
        limit, done_reason = cap, "length"
    endings = [(limit, 2, "done")]
    if script.cut_after is not None:
        endings.append((script.cut_after, 1, "cut"))
    if script.error_after is not None:
        endings.append((script.error_after, 0, "error"))
    stop, _, ending = min(endings)
    return sequence[: max(stop, 0)], ending, done_reason


async def _answer(state: DoubleState, ex: Exchange, turn: Turn, prompt: str) -> None:
    script = state.next_script()
    messages = turn.request.get("messages") if turn.kind == "chat" else None
    record = GenerationRecord(
        kind=turn.kind,
        model=turn.model,
        prompt=prompt,
        options=dict(turn.request.get("options", {})),
        stream=turn.stream,
        request=turn.request,
        messages=messages,
    )
    state.begin_generation(record)
    scheduled_ns = time.monotonic_ns()
    if script.hang:
        await ex.wait_until_interrupted()
        await _interrupted(state, ex, record)
        return
    if not await ex.pause(script.first_token_delay_s):
        await _interrupted(state, ex, record)
        return
    if script.status is not None:
        record.status, record.error = script.status, script.error
        await ex.error(script.status, script.error)
        return
    prompt_done_ns = time.monotonic_ns()
    chunks, ending, done_reason = _plan(script, record.options)
    for thinking, text in chunks:
        if not await ex.pause(script.delay_s):
            await _interrupted(state, ex, record)
            return
        if turn.stream and not await ex.write(go_json(_chunk(turn, text, thinking)) + b"\n"):
            await _interrupted(state, ex, record)
            return
        record.tokens_sent += 1
    if ending == "cut":
        record.aborted = True
        await ex.abort()
        return
    if ending == "error":
        record.error = script.error
        if ex.started:  # Ollama: after the first chunk an error is one more NDJSON line
            await ex.finish(go_json({"error": script.error}) + b"\n")
        else:
            record.status = 500
            content_type = "application/json" if turn.stream else None
            await _error(ex, 500, script.error, content_type)
        return
    now = time.monotonic_ns()
    metrics = {
        "total_duration": max(now - ex.arrived_ns, 1),
        "load_duration": max(scheduled_ns - ex.arrived_ns, 1),
        "prompt_eval_count": script.prompt_eval_count,
        "prompt_eval_duration": max(prompt_done_ns - scheduled_ns, 1),
        "eval_count": record.tokens_sent,
        "eval_duration": max(now - prompt_done_ns, 1),
    }
    content = "".join(text for thinking, text in chunks if not thinking)
    reasoning = "".join(text for thinking, text in chunks if thinking)
    record.done_reason, record.finished = done_reason, True
    state.mark_loaded(turn.entry, turn.keep_alive)
    if turn.stream:
        await ex.finish(go_json(_final(turn, "", "", done_reason, metrics)) + b"\n")
    else:
        await ex.json(200, _final(turn, content, reasoning, done_reason, metrics))


async def _error(ex: Exchange, status: int, message: str, content_type: str | None) -> None:
    """An error response; streamed requests that fail before the first chunk get Gin's
    ``application/json`` without charset (``streamResponse`` set the header first)."""
    if content_type is None:
        await ex.error(status, message)
    else:
        await ex.respond(status, go_json({"error": message}), content_type)


async def _interrupted(state: DoubleState, ex: Exchange, record: GenerationRecord) -> None:
    """Stop producing: the client left (a cancellation) or the double is going away (cut)."""
    if ex.gone:
        state.mark_cancelled(record)
    else:
        record.aborted = True
        await ex.abort()
