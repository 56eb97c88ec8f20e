"""Answering a validated ``/api/generate`` or ``/api/chat`` request from one :class:`Script`.

The script decides the timing, the chunks (thinking, text, tool calls) and how the answer ends;
the request decides the shape (``response`` or ``message``, streamed or whole) and, through
``format`` and ``tools``, whether the text is JSON and whether tool calls go out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.ollama_decode import (
    RequestError,
)
from tests.fakes.ollama_names import parse_model_name
from tests.fakes.ollama_options import (
    go_quote,
    num_predict,
)
from tests.fakes.ollama_records import GenerationRecord, ModelEntry, Script
from tests.fakes.ollama_schema import answer_text, split_tokens
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_tools import group_calls, render_calls
from tests.fakes.ollama_wire import Exchange, go_json, rfc3339

Piece = tuple[str, Any]  # ("thinking" | "text", str) or ("tools", [call, ...])


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
    path: str = ""
    body: Any = None
    messages: list[dict[str, Any]] = field(default_factory=list)


def installed(state: DoubleState, model: str) -> ModelEntry:
    if parse_model_name(model) is None:
        raise RequestError(400, "invalid model name")
    entry = state.find_model(model)
    if entry is None:
        raise RequestError(404, f"model '{model}' not found")
    return entry


def require(turn: Turn, wanted: list[str], verb: str) -> None:
    """Ollama's capability check: no ``completion`` is ``"<model>" does not support <verb>``;
    any other missing capability names the model by its full internal name."""
    missing = [cap for cap in wanted if cap not in turn.entry.capabilities]
    if "completion" in missing:
        raise RequestError(400, f"{go_quote(turn.model)} does not support {verb}")
    if missing:
        raise RequestError(400, f"{turn.entry.internal_name} does not support {missing[0]}")


def require_thinking(turn: Turn, think: bool) -> None:
    if think and "thinking" not in turn.entry.capabilities:
        raise RequestError(400, f"{go_quote(turn.model)} does not support thinking")


async def load_or_unload(state: DoubleState, ex: Exchange, turn: Turn, reason: str) -> None:
    """A single object whatever ``stream`` says; no metrics. Not a generation record."""
    state.mark_loaded(turn.entry, 0 if reason == "unload" else turn.keep_alive)
    body: dict[str, Any] = {"model": turn.model, "created_at": rfc3339()}
    if turn.kind == "generate":
        body.update(response="", done=True, done_reason=reason)
    else:
        body.update(message={"role": "assistant", "content": ""}, done_reason=reason, done=True)
    await ex.json(200, body)


def _has_format(turn: Turn) -> bool:
    return turn.request.get("format") not in (None, "")


def _text(script: Script, turn: Turn, with_calls: bool) -> list[str]:
    """The text chunks: the scripted tokens, JSON for ``format``, or nothing beside calls."""
    if script.json_answer:
        return split_tokens(answer_text(turn.request.get("format", "json")))
    if not script.default_tokens:
        return list(script.tokens)
    if with_calls:
        return []
    if script.json_answer is None and _has_format(turn):
        return split_tokens(answer_text(turn.request["format"]))
    return list(script.tokens)


def _plan(script: Script, turn: Turn) -> tuple[list[Piece], str, str]:
    """The chunks to produce, how the answer ends (done/error/cut) and the done_reason."""
    offered = turn.kind == "chat" and bool(turn.request.get("tools"))
    calls = render_calls(script.tool_calls, script.tool_call_style) if offered else []
    sequence: list[Piece] = [("thinking", t) for t in script.thinking]
    sequence += [("text", t) for t in _text(script, turn, bool(calls))]
    sequence += [("tools", group) for group in group_calls(calls, script.tool_chunks)]
    limit, done_reason = len(sequence), script.done_reason
    cap = num_predict(turn.request.get("options", {}))
    if cap is not None and cap < limit:
        limit, done_reason = cap, "length"
    endings = [(limit, 2, "done")]
    if script.cut_after is not None:
        endings.append((script.cut_after, 1, "cut"))
    if script.error_after is not None:
        endings.append((script.error_after, 0, "error"))
    stop, _, ending = min(endings)
    return sequence[: max(stop, 0)], ending, done_reason


def _chunk(turn: Turn, piece: Piece) -> dict[str, Any]:
    kind, value = piece
    body: dict[str, Any] = {"model": turn.model, "created_at": rfc3339()}
    if turn.kind == "generate":
        body["response"] = value if kind == "text" else ""
        if kind == "thinking":
            body["thinking"] = value
    else:
        message: dict[str, Any] = {"role": "assistant", "content": value if kind == "text" else ""}
        if kind == "thinking":
            message["thinking"] = value
        elif kind == "tools":
            message["tool_calls"] = value
        body["message"] = message
    body["done"] = False
    return body


def _final(
    turn: Turn, pieces: list[Piece], done_reason: str, metrics: dict[str, int]
) -> dict[str, Any]:
    """The ``done:true`` object (``pieces`` empty when streamed): metrics omitted when zero,
    like Go's ``omitempty``."""
    content = "".join(value for kind, value in pieces if kind == "text")
    thinking = "".join(value for kind, value in pieces if kind == "thinking")
    calls = [call for kind, value in pieces if kind == "tools" for call in value]
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
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        body.update(message=message, done_reason=done_reason, done=True)
    body.update(metrics)
    return body


async def answer(state: DoubleState, ex: Exchange, turn: Turn, prompt: str) -> None:
    script = state.next_script()
    record = GenerationRecord(
        kind=turn.kind,
        model=turn.model,
        prompt=prompt,
        options=dict(turn.request.get("options", {})),
        stream=turn.stream,
        request=turn.request,
        messages=turn.messages if turn.kind == "chat" else None,
        path=turn.path,
        body=turn.body,
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
    pieces, ending, done_reason = _plan(script, turn)
    for piece in pieces:
        if not await ex.pause(script.delay_s):
            await _interrupted(state, ex, record)
            return
        if turn.stream and not await ex.write(go_json(_chunk(turn, piece)) + b"\n"):
            await _interrupted(state, ex, record)
            return
        record.tokens_sent += 1
        if piece[0] == "tools":
            record.tool_calls_sent.extend(piece[1])
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
            await fail(ex, 500, script.error, turn.stream)
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
    record.done_reason, record.finished = done_reason, True
    state.mark_loaded(turn.entry, turn.keep_alive)
    if turn.stream:
        await ex.finish(go_json(_final(turn, [], done_reason, metrics)) + b"\n")
    else:
        await ex.json(200, _final(turn, pieces, done_reason, metrics))


async def fail(ex: Exchange, status: int, message: str, stream: bool) -> None:
    """An error before any output. Streamed requests get Gin's ``application/json`` without
    charset (``streamResponse`` set the header first); whole ones the usual ``c.JSON``."""
    if stream:
        await ex.respond(status, go_json({"error": message}), "application/json")
    else:
        await ex.error(status, message)


async def _interrupted(state: DoubleState, ex: Exchange, record: GenerationRecord) -> None:
    """Stop producing: the client left (a cancellation) or the double is going away (cut)."""
    if ex.gone:
        state.mark_cancelled(record)
    else:
        record.aborted = True
        await ex.abort()
