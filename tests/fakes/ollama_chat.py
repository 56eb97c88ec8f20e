"""``POST /api/chat`` for the Ollama double: Ollama's conversation API.

Request: ``model``, ``messages`` (``{role, content, images, thinking, tool_calls, tool_name,
tool_call_id}``, checked as :mod:`tests.fakes.ollama_messages` describes; roles are lower-cased),
``tools``, ``format``, ``options``, ``stream``, ``keep_alive``, ``think`` and the newer extras.

Order of the checks, as in Ollama's ``ChatHandler``: JSON binding, ``top_logprobs``, the model
(``model is required`` / ``invalid model name`` 400, not installed 404), unload (no messages and
``keep_alive`` 0), ``think`` on a model without thinking, capabilities (no ``completion``:
``"<model>" does not support chat``; ``tools`` offered to a model without them:
``registry.ollama.ai/library/<model>:<tag> does not support tools``), option types (500), load (no
messages), then ``format`` (500 from the runner). Images are not checked against ``vision``.
"""

from __future__ import annotations

from tests.fakes.ollama_answer import (
    Turn,
    answer,
    installed,
    load_or_unload,
    require,
    require_thinking,
)
from tests.fakes.ollama_decode import (
    FieldCheck,
    RequestError,
    check_think,
    parse_keep_alive,
)
from tests.fakes.ollama_generate import COMMON_FIELDS, bind, check_format_late
from tests.fakes.ollama_messages import MESSAGES, ollama_messages, tools_field
from tests.fakes.ollama_options import (
    check_options,
    check_top_logprobs,
)
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_wire import Exchange

CHAT_FIELDS: dict[str, FieldCheck] = {
    **COMMON_FIELDS,
    "messages": MESSAGES,
    "tools": tools_field,
}


async def handle_chat(state: DoubleState, ex: Exchange) -> None:
    req, body = bind(ex, CHAT_FIELDS, "ChatRequest")
    keep_alive = parse_keep_alive(req["keep_alive"]) if "keep_alive" in req else None
    think = check_think(req["think"]) if "think" in req else False
    check_top_logprobs(req)
    model = req.get("model", "")
    if not model:
        raise RequestError(400, "model is required")
    entry = installed(state, model)
    turn = Turn("chat", model, entry, req, keep_alive, req.get("stream", True))
    turn.path, turn.body = ex.path, body
    turn.messages = ollama_messages(req.get("messages", []))
    if not turn.messages and keep_alive == 0:
        await load_or_unload(state, ex, turn, "unload")
        return
    require_thinking(turn, think)
    require(turn, ["completion", *(["tools"] if req.get("tools") else [])], "chat")
    check_options(req.get("options", {}))
    if not turn.messages:
        await load_or_unload(state, ex, turn, "load")
        return
    if not await check_format_late(state, ex, turn):
        return
    users = [m for m in turn.messages if m.get("role") == "user"]
    await answer(state, ex, turn, str(users[-1].get("content", "")) if users else "")
