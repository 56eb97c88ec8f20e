"""``llmserve embed``: print embedding vectors as JSON."""

from __future__ import annotations

import json
import sys

import typer

from llmserve.cli._client import Client, api_key_option, open_client, server_option
from llmserve.cli._run import fail, run


def embed(
    texts: list[str] = typer.Argument(
        None,
        metavar="TEXT",
        help="The texts to embed, one vector each; '-' or nothing reads one from stdin.",
    ),
    model: str = typer.Option(None, help="The model (default: EMBEDDING_MODEL, else active)."),
    dimensions: int = typer.Option(None, min=1, help="Shorten the vectors (where supported)."),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Embed text and print {"model", "embeddings": [[...]], "usage"} as JSON on stdout."""
    inputs = _read_texts(texts or [])
    client = open_client(server, api_key)
    run(_embed(client, inputs, model, dimensions))


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
    client: Client, inputs: list[str], model: str | None, dimensions: int | None
) -> None:
    async with client:
        payload = await client.embed(inputs, model, dimensions)
    sys.stdout.write(json.dumps(payload) + "\n")
