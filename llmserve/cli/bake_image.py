"""``llmserve bake-image``: build the Ollama image with a model baked in.

The command is ``docker build -f docker/ollama.Dockerfile --build-arg BUILT_IN_OLLAMA_MODEL=<model>
-t <tag> .``, then ``docker push <tag>`` with ``--push``. ``--dry-run`` prints the commands, one
per line and shell-quoted, and needs no docker. Otherwise docker's output streams straight to the
terminal and its exit code becomes ours; a missing client or an unreachable daemon is one red line.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import typer

from llmserve import names
from llmserve.cli._run import EXIT_INTERRUPTED, fail, settings_or_exit
from llmserve.errors import InvalidModelNameError

IMAGE_REPOSITORY = "llmserve-ollama"
DEFAULT_DOCKERFILE = Path("docker/ollama.Dockerfile")
#: How long ``docker info`` may take to say whether the daemon answers.
DAEMON_CHECK_TIMEOUT_S = 20.0

_NOT_TAG_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_tag(model: str) -> str:
    """``llmserve-ollama:<model>`` with the model made a valid Docker tag.

    ``llama3.2:1b`` gives ``llmserve-ollama:llama3.2-1b``; ``/`` and ``:`` become ``-``.
    """
    tag = _NOT_TAG_SAFE.sub("-", model).lstrip(".-")[:128] or "latest"
    return f"{IMAGE_REPOSITORY}:{tag}"


def docker_commands(
    model: str, tag: str, dockerfile: Path, context: Path, push: bool
) -> list[list[str]]:
    """The docker commands ``bake-image`` runs, in order."""
    build = [
        "docker",
        "build",
        "-f",
        str(dockerfile),
        "--build-arg",
        f"BUILT_IN_OLLAMA_MODEL={model}",
        "-t",
        tag,
        str(context),
    ]
    return [build, ["docker", "push", tag]] if push else [build]


def bake_image(
    model: str | None = typer.Option(
        None, "--model", help="Model to bake in.", show_default="BUILT_IN_OLLAMA_MODEL"
    ),
    tag: str | None = typer.Option(
        None, "--tag", help="Image tag.", show_default="llmserve-ollama:<model, tag-safe>"
    ),
    push: bool = typer.Option(False, "--push", help="Push the image after building it."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the docker commands instead of running them."
    ),
    file: Path = typer.Option(DEFAULT_DOCKERFILE, "--file", help="The Ollama Dockerfile."),
    context: Path = typer.Option(Path("."), "--context", help="The docker build context."),
) -> None:
    """Build the Ollama Docker image with a model baked in."""
    model = _model_or_exit(model)
    if tag is not None and (not tag or any(char.isspace() for char in tag)):
        fail(f"invalid image tag {tag!r}: it must be non-empty, without spaces", 2)
    commands = docker_commands(model, tag or default_tag(model), file, context, push)
    if dry_run:
        for command in commands:
            typer.echo(shlex.join(command))
        return

    docker = shutil.which("docker")
    if docker is None:
        fail(
            "docker is not installed or not on PATH: install Docker, or use --dry-run to print "
            "the command",
            1,
        )
    if not file.is_file():
        fail(f"no Dockerfile at {file}: run from the project root or pass --file", 2)
    _check_daemon(docker)
    for command in commands:
        typer.echo(f"$ {shlex.join(command)}", err=True)
        code = _stream([docker, *command[1:]])
        if code != 0:
            fail(f"`{shlex.join(command[:2])}` failed with exit code {code}", code)


def _model_or_exit(model: str | None) -> str:
    if model is None:
        # Only the environment and .env; the backend's own requirements do not apply here.
        model = settings_or_exit().BUILT_IN_OLLAMA_MODEL
        if not model:
            fail("no model to bake: pass --model or set BUILT_IN_OLLAMA_MODEL", 2)
    try:
        names.parse(model)
    except InvalidModelNameError as exc:
        fail(exc.detail, 2)
    return model


def _check_daemon(docker: str) -> None:
    """Fail with one line unless the Docker daemon answers."""
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=DAEMON_CHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"the Docker daemon is not running (no answer in {DAEMON_CHECK_TIMEOUT_S:g} s)", 1)
    if result.returncode != 0:
        reason = _last_line(result.stderr) or _last_line(result.stdout)
        detail = f": {reason}" if reason else ""
        fail(f"the Docker daemon is not running or not reachable{detail}", 1)


def _stream(command: list[str]) -> int:
    """Run ``command`` with our stdout and stderr, so its output shows live; return its code."""
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        # docker got the same Ctrl-C from the terminal and stops its build.
        fail("interrupted", EXIT_INTERRUPTED)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
