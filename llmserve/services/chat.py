"""A chat conversation as a generation: messages in, ``GenerationRequest(prompt, system)`` out.

Every backend takes one prompt and one system prompt (the domain has no turns), so:

* all system messages (OpenAI's ``developer`` role too), joined by a blank line, become
  ``system``;
* a conversation of one user message becomes that message, unchanged, as the ``prompt`` — the
  backend applies the model's own chat template to it, so the common case loses nothing;
* a longer conversation becomes a plain transcript: ``User: …``, ``Assistant: …`` turns separated
  by blank lines, ending with ``Assistant:`` for the model to continue. When the conversation
  already ends with an assistant message, that message is left open for the model to complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmserve import errors
from llmserve.domain import GenerationOptions, GenerationRequest

SYSTEM_ROLES = frozenset({"system", "developer"})
_SPEAKERS = {"user": "User", "assistant": "Assistant"}


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system", "developer", "user" or "assistant"
    content: str


def chat_to_request(
    messages: Sequence[ChatMessage], options: GenerationOptions | None = None
) -> GenerationRequest:
    """Render ``messages`` into the backend's input (see the module docstring)."""
    system = [m.content for m in messages if m.role in SYSTEM_ROLES]
    turns = [m for m in messages if m.role not in SYSTEM_ROLES]
    unknown = sorted({m.role for m in turns} - _SPEAKERS.keys())
    if unknown:
        raise errors.InvalidRequestError(f"unsupported message role(s): {', '.join(unknown)}")
    if not turns:
        raise errors.InvalidRequestError("messages must contain a user message")
    if len(turns) == 1 and turns[0].role == "user":
        prompt = turns[0].content
    else:
        lines = [f"{_SPEAKERS[m.role]}: {m.content}" for m in turns]
        if turns[-1].role != "assistant":
            lines.append("Assistant:")
        prompt = "\n\n".join(lines)
    return GenerationRequest(
        prompt=prompt,
        system="\n\n".join(system) if system else None,
        options=options or GenerationOptions(),
    )
