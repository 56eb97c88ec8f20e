"""A conversation as the embedded model's prompt: its own chat template, or Gemma's turn format.

Small models' templates know three roles (system, user, assistant) and nothing of tools, so a
conversation is first reduced to those :func:`turns`:

* system messages before the first other message form the system turn; a later one (such as
  the instruction that forces a tool call) is user text where it stands;
* an assistant message's tool calls are written into its turn as JSON, one call a line, in the
  shape a forced ``required`` call is asked for: ``{"name": ..., "arguments": {...}}``;
* a tool result becomes user text ``Result of <tool name>: <content>`` (the name comes from the
  message, or from the assistant call it answers);
* neighbouring turns of one role are joined with a blank line, since templates such as
  Gemma's insist that user and assistant alternate.

With a template (``tokenizer.chat_template`` in the GGUF) the turns are rendered through
llama-cpp-python's ``Jinja2ChatFormatter``; a template that refuses the system role gets the
system text at the start of the first user turn instead. Without one, Gemma's turn format is
written by hand (Gemma has no system role either): ``<start_of_turn>user\\n…<end_of_turn>\\n``
and ``<start_of_turn>model\\n…<end_of_turn>\\n`` per turn, with the messages' text tokenized
without special tokens so that no message can close its turn. Either way the prompt ends with
an open model turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from llmserve import errors
from llmserve.domain import GenerationRequest, Message

GEMMA_USER = "<start_of_turn>user\n"
GEMMA_MODEL = "<end_of_turn>\n<start_of_turn>model\n"
_GEMMA_OPEN = "<start_of_turn>"
_GEMMA_CLOSE = "<end_of_turn>\n"
_GEMMA_ROLES = {"user": "user", "assistant": "model"}

Turn = tuple[str, str]  # (system | user | assistant, text)


def turns(messages: Sequence[Message]) -> list[Turn]:
    """The conversation in three roles, neighbours of one role merged (see the module doc)."""
    names = {call.id: call.name for message in messages for call in message.tool_calls}
    found: list[Turn] = []
    leading = True
    for message in messages:
        role, text = message.role, message.content
        if role == "system":
            role = "system" if leading else "user"
        else:
            leading = False
        if role == "assistant" and message.tool_calls:
            calls = "\n".join(
                orjson.dumps({"name": call.name, "arguments": call.arguments}).decode()
                for call in message.tool_calls
            )
            text = f"{text}\n\n{calls}" if text else calls
        elif role == "tool":
            name = message.tool_name or names.get(message.tool_call_id or "") or "a tool"
            role, text = "user", f"Result of {name}: {text}"
        _append(found, role, text)
    return found


def _append(found: list[Turn], role: str, text: str) -> None:
    if found and found[-1][0] == role:
        previous = found[-1][1]
        found[-1] = (role, f"{previous}\n\n{text}" if previous and text else previous or text)
    else:
        found.append((role, text))


def without_system(conversation: list[Turn]) -> list[Turn]:
    """The system turn moved to the start of the first user turn (or made one)."""
    merged: list[Turn] = []
    for role, text in conversation:
        _append(merged, "user" if role == "system" else role, text)
    return merged


class PromptBuilder:
    """The model's chat template, or Gemma's turn format when the GGUF carries none."""

    def __init__(self, llama: Any, template: str | None) -> None:
        self._llama = llama
        self._formatter = _jinja_formatter(llama, template) if template else None

    def tokens(self, request: GenerationRequest) -> list[int]:
        """The prompt for ``request.messages``, ending with an open model turn."""
        conversation = turns(request.messages)
        if self._formatter is not None:
            return self._templated(self._formatter, conversation)
        return self._gemma(without_system(conversation))

    def _gemma(self, conversation: list[Turn]) -> list[int]:
        # Runs of control text are tokenized together (as one string, so a one-turn prompt
        # gives exactly the tokens of GEMMA_USER + text + GEMMA_MODEL); message text never
        # with special tokens.
        pieces: list[tuple[str, bool]] = []
        for role, text in conversation:
            opening = f"{_GEMMA_OPEN}{_GEMMA_ROLES[role]}\n"
            pieces += [(opening, True), (text, False), (_GEMMA_CLOSE, True)]
        pieces.append((f"{_GEMMA_OPEN}model\n", True))
        tokenize = self._llama.tokenize
        tokens: list[int] = []
        control = ""
        for text, special in pieces:
            if special:
                control += text
                continue
            if not text:
                continue
            tokens += tokenize(control.encode(), add_bos=not tokens, special=True)
            control = ""
            tokens += tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
        tail: list[int] = tokenize(control.encode(), add_bos=not tokens, special=True)
        return tokens + tail

    def _templated(self, formatter: Any, conversation: list[Turn]) -> list[int]:
        attempts = [conversation]
        if any(role == "system" for role, _ in conversation):
            # Some templates refuse a system role (raise_exception); merge it into the turn.
            attempts.append(without_system(conversation))
        problem: Exception | None = None
        for attempt in attempts:
            messages = [{"role": role, "content": text} for role, text in attempt]
            try:
                rendered = formatter(messages=messages).prompt
            except Exception as exc:  # noqa: BLE001 - jinja2 raises anything a template does
                problem = exc
                continue
            # Templates write the BOS token themselves, as llama-cpp-python assumes.
            templated: list[int] = self._llama.tokenize(
                rendered.encode("utf-8", "replace"), add_bos=False, special=True
            )
            return templated
        raise errors.BackendError(f"the model's chat template failed: {problem}")


def _jinja_formatter(llama: Any, template: str) -> Any:
    import llama_cpp  # imported already: there is a model
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = llama_cpp.llama_model_get_vocab(llama.model)

    def text(token: int) -> str:
        if token < 0:
            return ""
        piece: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
        return piece.decode("utf-8", "replace")

    return Jinja2ChatFormatter(
        template=template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos())
    )
