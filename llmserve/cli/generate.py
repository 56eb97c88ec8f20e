"""``llmserve generate``: stream a generation to the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from llmserve.cli._client import (
    ROUTE,
    Client,
    Ending,
    api_key_option,
    open_client,
    server_option,
)
from llmserve.cli._run import fail, run
from llmserve.domain import GenerationOptions, GenerationRequest, ResponseFormat

__all__ = ["FORMAT_HELP", "ROUTE", "generate", "parse_format"]

FORMAT_HELP = "Answer in JSON: 'json' for any JSON object, '@FILE' for the JSON Schema in FILE."


def generate(
    prompt: str = typer.Argument(None, help="The prompt; '-' or nothing reads it from stdin."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the text when it is done."),
    system: str = typer.Option(None, help="System prompt."),
    temperature: float = typer.Option(None, min=0.0, max=2.0, help="Sampling temperature."),
    max_tokens: int = typer.Option(None, min=1, help="Stop after this many tokens."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
    answer_format: str = typer.Option(
        None, "--format", metavar="json|@SCHEMA.json", help=FORMAT_HELP
    ),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Generate text with the active model, streaming it as it arrives."""
    response_format = parse_format(answer_format)
    text = _read_prompt(prompt)
    client = open_client(server, api_key)
    request = GenerationRequest.from_prompt(
        text,
        system,
        GenerationOptions(temperature=temperature, max_tokens=max_tokens),
        response_format=response_format,
    )
    run(_generate(client, request, stream=not no_stream and not json_output, as_json=json_output))


def parse_format(value: str | None) -> ResponseFormat | None:
    """``--format``: ``json``, or ``@FILE`` holding a JSON Schema. Anything else, an unreadable
    file, invalid JSON or an invalid schema is one red line and exit 2."""
    if value is None:
        return None
    if value == "json":
        return ResponseFormat("json")
    if not value.startswith("@") or len(value) == 1:
        fail(f"--format must be 'json' or '@FILE' (a JSON Schema file), not {value!r}", 2)
    path = Path(value[1:])
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read the schema file '{path}': {exc.strerror or exc}", 2)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"the schema file '{path}' is not valid JSON: {exc}", 2)
    if not isinstance(schema, dict):
        fail(f"the schema file '{path}' must hold a JSON object (a JSON Schema)", 2)
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        fail(f"the schema file '{path}' is not a valid JSON Schema: {exc.message}", 2)
    return ResponseFormat("json_schema", schema=schema)


def _read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            fail("no prompt: give one as an argument, or pipe it on stdin", 2)
        prompt = sys.stdin.read()
    if not prompt.strip():
        fail("the prompt is empty", 2)
    return prompt


async def _generate(
    client: Client, request: GenerationRequest, *, stream: bool, as_json: bool
) -> None:
    """Print the answer: streamed as it arrives, or at once (``--no-stream``, ``--json``)."""
    out = Console(highlight=False, soft_wrap=True) if sys.stdout.isatty() else None
    async with client:
        reply = await client.answer(request, kind="generate", stream=stream)
        parts: list[str] = []
        try:
            async for piece in reply:
                parts.append(piece)
                if stream:
                    _write(out, piece)
        finally:
            await reply.aclose()
        text = "".join(parts)
        if as_json:
            ending = reply.ending or Ending()
            sys.stdout.write(json.dumps(ending.payload("response", text)) + "\n")
        elif not stream:
            _write(out, text)
        if not as_json:
            _write(out, "\n")


def _write(out: Console | None, text: str) -> None:
    if out is not None:
        out.print(text, end="", markup=False, emoji=False)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
