"""The API images' HEALTHCHECK: ask ``/health`` of the server this container runs.

The address is the one ``llmserve serve`` was really given: the entrypoint passes
``--host 0.0.0.0 --port 8000`` and then the container's own arguments, so ``docker run IMAGE
--port 9000`` serves on 9000, and a probe of a fixed 8000 would call a healthy server
unhealthy. The probe reads the arguments of the ``serve`` process from ``/proc`` (the last
``--port`` wins, as it does for ``serve``), falls back to ``PORT`` and then 8000, and asks the
loopback address when the server listens on every address. It writes nothing.

Exit 0 when ``/health`` answers 200, 1 otherwise (Docker's healthy / unhealthy).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def serve_arguments(proc: Path = Path("/proc")) -> list[str] | None:
    """The arguments after ``serve`` of the oldest ``llmserve serve`` process, if any."""
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    for pid in pids:
        try:
            argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        words = [word.decode(errors="replace") for word in argv if word]
        for index, word in enumerate(words[:-1]):
            if os.path.basename(word) == "llmserve" and words[index + 1] == "serve":
                return words[index + 2 :]
    return None


def option(arguments: list[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` or ``--name=VALUE``."""
    value = None
    for index, word in enumerate(arguments):
        if word == name and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif word.startswith(name + "="):
            value = word[len(name) + 1 :]
    return value


def health_url() -> str:
    arguments = serve_arguments() or []
    port = option(arguments, "--port") or os.environ.get("PORT") or "8000"
    host = option(arguments, "--host") or os.environ.get("HOST_BIND_IP") or "127.0.0.1"
    host = ANY_ADDRESS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def main() -> int:
    url = health_url()
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = response.status
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
