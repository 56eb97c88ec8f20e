"""The ``llmserve`` command: one Typer app, one module per command."""

from __future__ import annotations

import typer

from llmserve import __version__

app = typer.Typer(
    name="llmserve",
    help="A private, production-grade API server for local large language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """A private, production-grade API server for local large language models."""


def _register() -> None:
    # Imported here so that `llmserve --help` stays fast and nothing runs at import time.
    from llmserve.cli import (
        backends,
        bake_image,
        chat,
        embed,
        generate,
        keys,
        logs,
        migrate,
        models,
        serve,
        stats,
    )

    app.command("serve")(serve.serve)
    app.command("migrate")(migrate.migrate)
    app.command("generate")(generate.generate)
    app.command("chat")(chat.chat)
    app.command("embed")(embed.embed)
    app.command("bake-image")(bake_image.bake_image)
    app.add_typer(models.app, name="models")
    app.add_typer(keys.app, name="keys")
    app.add_typer(logs.app, name="logs")
    app.command("stats")(stats.stats)
    app.command("backends")(backends.backends)


def main() -> None:
    _register()
    app()
