"""``llmserve embed``: print embedding vectors as JSON."""

from __future__ import annotations

import json
import sys

import typer

from llmserve.cli._run import backend_settings_or_exit, fail, run
from llmserve.settings import Settings

ROUTE = "cli"


def embed(
    texts: list[str] = typer.Argument(
        None,
        metavar="TEXT",
        help="The texts to embed, one vector each; '-' or nothing reads one from stdin.",
    ),
    model: str = typer.Option(None, help="The model (default: EMBEDDING_MODEL, else active)."),
    dimensions: int = typer.Option(None, min=1, help="Shorten the vectors (where supported)."),
) -> None:
    """Embed text and print {"model", "embeddings": [[...]], "usage"} as JSON on stdout."""
    inputs = _read_texts(texts or [])
    settings = backend_settings_or_exit()
    run(_embed(settings, inputs, model, dimensions))


def _read_texts(texts: list[str]) -> list[str]:
    """The arguments, with ``-`` (or no argument at all) standing for stdin, read once."""
    if not texts:
        if sys.stdin.isatty():
            fail("no text: give it as an argument, or pipe it on stdin", 2)
        texts = ["-"]
    piped: str | None = None
    inputs: list[str] = []
    for text in texts:
        if text == "-":
            # The line break `echo` adds is not part of the text: `echo hi | llmserve embed`
            # and `llmserve embed hi` give the same vector.
            piped = sys.stdin.read().rstrip("\r\n") if piped is None else piped
            text = piped
        if not text.strip():
            fail("the text is empty", 2)
        inputs.append(text)
    return inputs


async def _embed(
    settings: Settings, inputs: list[str], model: str | None, dimensions: int | None
) -> None:
    from llmserve.runtime import Runtime

    async with Runtime(settings, follow_active_model=False) as runtime:
        answer = await runtime.embeddings.embed(
            inputs, route=ROUTE, model=model, dimensions=dimensions
        )
    payload = {
        "model": answer.model,
        "embeddings": answer.embeddings.vectors,
        "usage": {"prompt_tokens": answer.embeddings.prompt_tokens},
    }
    sys.stdout.write(json.dumps(payload) + "\n")
