"""``POST /api/generate`` for the Ollama double.

Validation happens in Ollama's order and fails before any byte is sent: JSON binding (types,
``keep_alive``, ``think``, base64 images), ``top_logprobs``, the model, unload, raw mode, the
capabilities (``completion``, ``insert`` for ``suffix``, ``thinking``), the options, load, and
last ``format`` (checked by the runner, so the model is loaded by then). Then the request consumes
one :class:`~tests.fakes.ollama_records.Script` (see :mod:`tests.fakes.ollama_answer`).
"""

from __future__ import annotations

from typing import Any

from tests.fakes.ollama_answer import (
    Turn,
    answer,
    fail,
    installed,
    load_or_unload,
    require,
    require_thinking,
)
from tests.fakes.ollama_decode import (
    FieldCheck,
    RequestError,
    anything,
    boolean,
    check_think,
    decode_body,
    integer,
    list_of,
    obj,
    parse_keep_alive,
    received_json,
    string,
)
from tests.fakes.ollama_messages import IMAGES
from tests.fakes.ollama_options import (
    check_format,
    check_options,
    check_top_logprobs,
)
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_wire import Exchange

COMMON_FIELDS: dict[str, FieldCheck] = {
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
    **COMMON_FIELDS,
    "prompt": string,
    "suffix": string,
    "system": string,
    "template": string,
    "context": list_of(integer, "[]int"),
    "raw": boolean,
    "images": IMAGES,
}


def bind(ex: Exchange, fields: dict[str, FieldCheck], struct: str) -> tuple[dict[str, Any], Any]:
    """Decode the body like Gin's ``ShouldBindJSON``; return the fields and the raw JSON."""
    req = decode_body(ex.body, fields, struct)
    return req, received_json(ex.body)


async def check_format_late(state: DoubleState, ex: Exchange, turn: Turn) -> bool:
    """The runner rejects a bad ``format`` once the model is loaded: a 500, shaped like any
    error before the first chunk. Return whether the request may go on."""
    try:
        if "format" in turn.request:
            check_format(turn.request["format"])
    except RequestError as exc:
        state.mark_loaded(turn.entry, turn.keep_alive)
        await fail(ex, exc.status, exc.message, turn.stream)
        return False
    return True


async def handle_generate(state: DoubleState, ex: Exchange) -> None:
    req, body = bind(ex, GENERATE_FIELDS, "GenerateRequest")
    keep_alive = parse_keep_alive(req["keep_alive"]) if "keep_alive" in req else None
    think = check_think(req["think"]) if "think" in req else False
    check_top_logprobs(req)
    model = req.get("model", "")
    if not model:
        raise RequestError(404, "model '' not found")
    entry = installed(state, model)
    turn = Turn("generate", model, entry, req, keep_alive, req.get("stream", True))
    turn.raw, turn.path, turn.body = bool(req.get("raw")), ex.path, body
    prompt = req.get("prompt", "")
    if not prompt and keep_alive == 0:
        await load_or_unload(state, ex, turn, "unload")
        return
    if turn.raw and (req.get("template") or req.get("system") or req.get("context")):
        raise RequestError(400, "raw mode does not support template, system, or context")
    require_thinking(turn, think)
    require(turn, ["completion", *(["insert"] if req.get("suffix") else [])], "generate")
    check_options(req.get("options", {}))
    if not prompt:
        await load_or_unload(state, ex, turn, "load")
        return
    if await check_format_late(state, ex, turn):
        await answer(state, ex, turn, prompt)
