"""``llmserve generate``: stream a generation to the terminal."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

from llmserve.cli._run import configure_logging, fail, run, settings_or_exit
from llmserve.domain import GenerationOptions, GenerationRequest
from llmserve.settings import Settings, SettingsError

ROUTE = "cli"


def generate(
    prompt: str = typer.Argument(None, help="The prompt; '-' or nothing reads it from stdin."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the text when it is done."),
    system: str = typer.Option(None, help="System prompt."),
    temperature: float = typer.Option(None, min=0.0, max=2.0, help="Sampling temperature."),
    max_tokens: int = typer.Option(None, min=1, help="Stop after this many tokens."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Generate text with the active model, streaming it as it arrives."""
    text = _read_prompt(prompt)
    settings = settings_or_exit()
    try:
        settings.check_backend()
    except SettingsError as exc:
        fail(str(exc), 2)
    configure_logging("WARNING")
    request = GenerationRequest.from_prompt(
        text, system, GenerationOptions(temperature=temperature, max_tokens=max_tokens)
    )
    run(_generate(settings, request, stream=not no_stream and not json_output, as_json=json_output))


def _read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            fail("no prompt: give one as an argument, or pipe it on stdin", 2)
        prompt = sys.stdin.read()
    if not prompt.strip():
        fail("the prompt is empty", 2)
    return prompt


async def _generate(
    settings: Settings, request: GenerationRequest, *, stream: bool, as_json: bool
) -> None:
    from llmserve.runtime import Runtime

    out = Console(highlight=False, soft_wrap=True) if sys.stdout.isatty() else None
    async with Runtime(settings, follow_active_model=False) as runtime:
        generation = await runtime.generation.generate(request, route=ROUTE)
        parts: list[str] = []
        try:
            async for piece in generation:
                if type(piece) is str:
                    parts.append(piece)
                    if stream:
                        _write(out, piece)
        finally:
            await generation.aclose()
        text = "".join(parts)
        if as_json:
            result = generation.result
            payload = {
                "response": text,
                "model": generation.model,
                "done_reason": result.done_reason if result else None,
                "usage": {
                    "prompt_tokens": result.usage.prompt_tokens if result else None,
                    "completion_tokens": result.usage.completion_tokens if result else None,
                },
            }
            sys.stdout.write(json.dumps(payload) + "\n")
        elif not stream:
            _write(out, text)
        if not as_json:
            _write(out, "\n")


def _write(out: Console | None, text: str) -> None:
    if out is not None:
        out.print(text, end="", markup=False)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
