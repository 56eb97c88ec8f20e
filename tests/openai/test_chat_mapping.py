"""Chat messages → the backend's one prompt and one system prompt (``services/chat.py``)."""

from __future__ import annotations

import pytest

from llmserve import errors
from llmserve.domain import GenerationOptions
from llmserve.services.chat import ChatMessage, chat_to_request


def _m(role: str, content: str) -> ChatMessage:
    return ChatMessage(role, content)


def test_a_single_user_message_is_the_prompt_unchanged() -> None:
    request = chat_to_request([_m("user", "  Why is the sky blue?\n")])
    assert request.prompt == "  Why is the sky blue?\n"
    assert request.system is None


def test_system_messages_are_joined_into_the_system_prompt() -> None:
    request = chat_to_request(
        [_m("system", "Be brief."), _m("developer", "Answer in French."), _m("user", "Hi")]
    )
    assert request.system == "Be brief.\n\nAnswer in French."
    assert request.prompt == "Hi"


def test_a_conversation_becomes_a_transcript_ending_with_the_assistant_cue() -> None:
    request = chat_to_request(
        [
            _m("system", "Be brief."),
            _m("user", "Hi"),
            _m("assistant", "Hello! How can I help?"),
            _m("user", "Tell me a joke."),
        ]
    )
    assert request.system == "Be brief."
    assert request.prompt == (
        "User: Hi\n\nAssistant: Hello! How can I help?\n\nUser: Tell me a joke.\n\nAssistant:"
    )


def test_a_system_message_between_turns_still_goes_to_the_system_prompt() -> None:
    request = chat_to_request(
        [_m("user", "a"), _m("system", "s"), _m("assistant", "b"), _m("user", "c")]
    )
    assert request.system == "s"
    assert request.prompt == "User: a\n\nAssistant: b\n\nUser: c\n\nAssistant:"


def test_a_final_assistant_message_is_left_open_for_the_model_to_continue() -> None:
    request = chat_to_request([_m("user", "Count to 3"), _m("assistant", "1, 2,")])
    assert request.prompt == "User: Count to 3\n\nAssistant: 1, 2,"


def test_options_are_carried_over() -> None:
    options = GenerationOptions(temperature=0.5, stop=("x",), max_tokens=3)
    assert chat_to_request([_m("user", "hi")], options).options == options
    assert chat_to_request([_m("user", "hi")]).options == GenerationOptions()


@pytest.mark.parametrize(
    "messages",
    [[], [_m("system", "only a system prompt")], [_m("tool", "42"), _m("user", "hi")]],
)
def test_conversations_without_a_turn_or_with_unknown_roles_are_refused(
    messages: list[ChatMessage],
) -> None:
    with pytest.raises(errors.InvalidRequestError):
        chat_to_request(messages)
