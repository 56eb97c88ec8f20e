"""``llmserve chat``: a conversation with the active model, one turn after another.

What stdin is decides the face (:mod:`llmserve.cli._chat_faces`):

* a terminal: an interactive session; the answer is rendered as it arrives;
* ``--json``: one user message per line, one JSON object per answer on stdout
  (``{"message": {"role", "content"}, "model", "done_reason", "usage"}``);
* a pipe without ``--json``: one user message per line, each answer as plain text, answers
  separated by a blank line.

A line that starts with ``/`` is a command (:data:`HELP`); ``//`` sends a line starting with
``/``. Blank lines are skipped. Notes (command results, the banner) go to stderr.

Contract for interruptions: Ctrl-C during an answer closes the generation upstream and drops the
turn — neither the question nor the partial answer stays in the conversation (so ``/save`` and
the next request never carry a cut answer); an interactive session then returns to the prompt,
a piped one exits 130. Ctrl-C or Ctrl-D at the interactive prompt ends the session with exit 0.
A failed turn is dropped the same way: interactively it prints one red line and the session goes
on; piped, it ends the session with the error's exit code.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from llmserve import errors
from llmserve.cli._chat_faces import Face, JsonLines, Terminal, stderr
from llmserve.cli._client import Client, api_key_option, connected, open_client, server_option
from llmserve.cli._run import EXIT_INTERRUPTED, exit_code_for, fail
from llmserve.cli.generate import FORMAT_HELP, parse_format
from llmserve.domain import GenerationOptions, GenerationRequest, Message, ResponseFormat

HELP = """\
/system TEXT   set the system message (/system alone removes it)
/reset         forget the conversation (the system message stays)
/save FILE     write the conversation to FILE as JSON
/help          this list
//TEXT         send a message that starts with /
Ctrl-C stops an answer (that turn is not kept); Ctrl-D or Ctrl-C at the prompt quits."""


def chat(
    system: str = typer.Option(None, help="System message."),
    temperature: float = typer.Option(None, min=0.0, max=2.0, help="Sampling temperature."),
    max_tokens: int = typer.Option(None, min=1, help="Stop each answer after this many tokens."),
    answer_format: str = typer.Option(
        None, "--format", metavar="json|@SCHEMA.json", help=FORMAT_HELP
    ),
    json_output: bool = typer.Option(
        False, "--json", help="For scripts: a message per stdin line, a JSON object per answer."
    ),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Chat with the active model: an interactive session (/system, /reset, /save FILE, /help;
    Ctrl-C stops an answer, Ctrl-D quits), or one message per stdin line."""
    response_format = parse_format(answer_format)
    client = open_client(server, api_key)
    face: Face
    if json_output:
        face = JsonLines()
    elif sys.stdin.isatty():
        face = Terminal()
    else:
        face = Face()
    options = GenerationOptions(temperature=temperature, max_tokens=max_tokens)
    conversation = Conversation(system, options=options, response_format=response_format)
    _session(client, face, conversation)


@dataclass
class Conversation:
    """The system message and the finished turns; a turn joins only once it is answered."""

    system: str | None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    response_format: ResponseFormat | None = None
    turns: list[Message] = field(default_factory=list)

    def request(self, text: str) -> GenerationRequest:
        head = [Message("system", self.system)] if self.system else []
        messages = (*head, *self.turns, Message("user", text))
        return GenerationRequest(
            messages, options=self.options, response_format=self.response_format
        )

    def as_json(self) -> dict[str, list[dict[str, str]]]:
        head = [Message("system", self.system)] if self.system else []
        return {"messages": [{"role": m.role, "content": m.content} for m in (*head, *self.turns)]}


class CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_command(line: str, conversation: Conversation) -> str:
    """Carry out a ``/`` command; return what to tell the user."""
    name, argument = (*line.split(None, 1), "")[:2]
    if name == "/system":
        conversation.system = argument or None
        return "System message set." if argument else "System message removed."
    if name == "/reset":
        conversation.turns.clear()
        return "Conversation forgotten."
    if name == "/save":
        if not argument:
            raise CommandError("/save needs a file name", 2)
        path = Path(argument).expanduser()
        try:
            saved = conversation.as_json()
            path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n", "utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write '{path}': {exc.strerror or exc}", 1) from None
        return f"Saved {len(saved['messages'])} messages to {path}."
    if name == "/help":
        return HELP
    raise CommandError(f"unknown command {name!r}; /help lists them", 2)


def _session(client: Client, face: Face, conversation: Conversation) -> None:
    """The turn loop. One event loop lives for the whole session (the client's connections are
    bound to it) and runs one turn at a time; lines are read outside it, so Ctrl-C and Ctrl-D
    at the prompt behave as at any prompt."""
    try:
        with connected(client) as runner:
            if face.interactive:
                face.started(runner.run(client.active()))
            _turns(runner, client, face, conversation)
    except errors.LlmserveError as exc:
        fail(exc.detail, exit_code_for(exc))
    except KeyboardInterrupt:
        _interrupted()


def _turns(runner: asyncio.Runner, client: Client, face: Face, conversation: Conversation) -> None:
    """Read, answer, repeat, until the input ends. Piped, the first failure ends it."""
    while True:
        try:
            line = face.read()
        except EOFError:
            break
        except KeyboardInterrupt:
            if not face.interactive:
                raise
            break
        try:
            _turn(runner, client, face, conversation, line)
        except KeyboardInterrupt:  # Ctrl-C just before or after an answer: as good as during it
            if not face.interactive:
                raise
            _stopped(face)
    if face.interactive:
        stderr.print()


def _turn(
    runner: asyncio.Runner, client: Client, face: Face, conversation: Conversation, line: str
) -> None:
    text = line.strip()
    if not text:
        return
    if text.startswith("/") and not text.startswith("//"):
        try:
            face.note(run_command(text, conversation))
        except CommandError as exc:
            if not face.interactive:
                fail(str(exc), exc.code)
            _red_line(str(exc))
        return
    message = line.lstrip()[1:] if text.startswith("//") else line
    try:
        answer = runner.run(_answer(client, conversation.request(message), face))
    except errors.LlmserveError as exc:
        if not face.interactive:
            raise
        face.cut()
        _red_line(exc.detail)
        return
    if answer is None:
        if not face.interactive:
            _interrupted()
        _stopped(face)
        return
    conversation.turns += [Message("user", message), Message("assistant", answer)]


async def _answer(client: Client, request: GenerationRequest, face: Face) -> str | None:
    """The answer's text, or None when Ctrl-C stopped it.

    Ctrl-C is the loop's signal handler while a turn runs: it wakes the loop at once (even while
    nothing arrives from upstream) and cancels the turn, whose ``finally`` closes the
    generation upstream."""
    loop = asyncio.get_running_loop()
    turn = asyncio.ensure_future(_stream(client, request, face))
    loop.add_signal_handler(signal.SIGINT, turn.cancel)
    try:
        return await turn
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if turn.cancelled() and current is not None and not current.cancelling():
            return None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _stream(client: Client, request: GenerationRequest, face: Face) -> str:
    reply = await client.answer(request, kind="chat", stream=face.streams)
    parts: list[str] = []
    try:
        face.begin()
        async for piece in reply:
            parts.append(piece)
            face.piece(piece)
    finally:
        await reply.aclose()
    text = "".join(parts)
    face.answered(reply.ending, text)
    return text


def _stopped(face: Face) -> None:
    face.cut()
    stderr.print("[yellow]Stopped; this turn is not kept.[/]")


def _interrupted() -> NoReturn:
    stderr.print("[yellow]Interrupted.[/]")
    raise typer.Exit(EXIT_INTERRUPTED)


def _red_line(message: str) -> None:
    stderr.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)
