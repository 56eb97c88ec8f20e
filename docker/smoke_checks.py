"""The HTTP side of ``docker/smoke.sh``: the Ollama test double, and the checks made of a
running image through its published port. Each check prints one ``ok: ...`` or ``FAIL: ...``
line; the exit status is the number of failures (0: all passed).

Usage, from the repository root with the project's virtualenv::

    python docker/smoke_checks.py double PORT_FILE       # serve the double until SIGTERM
    python docker/smoke_checks.py api URL                # /health, /ready, JSON, SSE, OpenAI
    python docker/smoke_checks.py drain URL -- CMD...    # CMD after the first token (a SIGTERM)
    python docker/smoke_checks.py cpu URL                # real text from the built-in model

The double answers every generation with ``TOKENS`` chunks, ``DELAY_S`` apart, so that a stream
lasts long enough to be interrupted and that each token is seen to arrive on its own.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

MODEL = "smoke-model"
TOKENS = [f"word{index} " for index in range(20)]
DELAY_S = 0.1
TIMEOUT = httpx.Timeout(60.0, connect=5.0)

failures = 0


def report(name: str, passed: bool, detail: str = "") -> bool:
    global failures
    if passed:
        print(f"ok: {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL: {name}" + (f": {detail}" if detail else ""), flush=True)
    return passed


def check(name: str, probe: Callable[[], str | None]) -> None:
    """Run ``probe``: it returns None when the check passes, else what went wrong."""
    try:
        problem = probe()
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        problem = f"{exc.__class__.__name__}: {exc}"
    report(name, problem is None, problem or "")


def sse_events(response: httpx.Response) -> Iterator[tuple[float, str, str]]:
    """``(arrival time, event name, data)`` of each Server-Sent Event."""
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield time.monotonic(), event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def stream_generation(
    client: httpx.Client, body: dict[str, object], on_first: Callable[[], None] | None = None
) -> tuple[list[str], list[float], bool, str]:
    """Stream ``/api/v1/generate``: the tokens, their arrival times, whether the final ``{}``
    came, and the error event's data if any."""
    tokens: list[str] = []
    times: list[float] = []
    done, error = False, ""
    with client.stream("POST", "/api/v1/generate", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            return [], [], False, f"status {response.status_code}: {response.text[:200]}"
        for arrived, event, data in sse_events(response):
            if event == "error":
                error = data
                break
            payload = json.loads(data)
            if payload == {}:
                done = True
                break
            tokens.append(payload["response"])
            times.append(arrived)
            if on_first is not None and len(tokens) == 1:
                on_first()
    return tokens, times, done, error


# -- the double -----------------------------------------------------------------------------


def run_double(port_file: Path) -> int:
    from tests.fakes import OllamaDouble, Script

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with OllamaDouble.running(models=[MODEL]) as double:
        double.default_script = Script(tokens=list(TOKENS), delay_s=DELAY_S)
        port_file.write_text(str(double.port), encoding="utf-8")
        stop.wait()
    return 0


# -- the default image ----------------------------------------------------------------------


def check_api(url: str) -> int:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:

        def health() -> str | None:
            response = client.get("/health")
            return None if response.status_code == 200 else f"status {response.status_code}"

        def ready() -> str | None:
            response = client.get("/ready")
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:300]}"
            return None

        def json_generation() -> str | None:
            response = client.post("/api/v1/generate", json={"prompt": "Say something."})
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:300]}"
            body = response.json()
            if body["response"] != "".join(TOKENS) or body["model"] != MODEL:
                return f"unexpected answer {body}"
            return None

        def sse_generation() -> str | None:
            tokens, times, done, error = stream_generation(client, {"prompt": "Say something."})
            if error or not done:
                return error or "the stream ended without its final event"
            if tokens != TOKENS:
                return f"tokens {tokens}"
            return _per_token(times)

        def openai_chat() -> str | None:
            response = client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
            )
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:300]}"
            body = response.json()
            content = body["choices"][0]["message"]["content"]
            if body["object"] != "chat.completion" or content != "".join(TOKENS):
                return f"unexpected answer {body}"
            return None

        check("GET /health answers 200", health)
        check("GET /ready answers 200 (database, schema, backend, model)", ready)
        check("POST /api/v1/generate answers JSON", json_generation)
        check("POST /api/v1/generate streams SSE, token by token", sse_generation)
        check("POST /v1/chat/completions answers", openai_chat)
    return failures


def _per_token(times: list[float]) -> str | None:
    """The tokens arrived one by one, not in one burst at the end."""
    if len(times) < 3:
        return f"only {len(times)} token events"
    spread = times[-1] - times[0]
    if spread < (len(times) - 1) * DELAY_S * 0.5:
        return f"{len(times)} tokens arrived within {spread:.3f} s: buffered, not streamed"
    return None


def check_drain(url: str, command: list[str]) -> int:
    """Start a stream, run ``command`` (a SIGTERM to the server) after its first token, and
    check that the stream still ends normally with every token."""
    sent: list[subprocess.CompletedProcess[str]] = []

    def terminate() -> None:
        sent.append(subprocess.run(command, capture_output=True, text=True, check=False))

    def drain() -> str | None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            tokens, _, done, error = stream_generation(client, {"prompt": "Hi"}, terminate)
        if not sent or sent[0].returncode != 0:
            return "the signal was not sent: " + (sent[0].stderr.strip() if sent else "no token")
        if error or not done:
            return error or f"the stream was cut after {len(tokens)} tokens"
        if tokens != TOKENS:
            return f"{len(tokens)} of {len(TOKENS)} tokens"
        return None

    check("SIGTERM mid-stream: the running stream finishes with every token", drain)
    return failures


# -- the cpu image --------------------------------------------------------------------------


def check_cpu(url: str) -> int:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:

        def ready() -> str | None:
            response = client.get("/ready")
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:300]}"
            return None

        def real_text() -> str | None:
            body = {
                "prompt": "Once upon a time, there was a little",
                "options": {"max_tokens": 24, "temperature": 0, "seed": 1},
            }
            tokens, times, done, error = stream_generation(client, body)
            if error or not done:
                return error or "the stream ended without its final event"
            text = "".join(tokens)
            if sum(character.isalpha() for character in text) < 10:
                return f"no real text: {text!r}"
            print(f"   the model wrote: {text.strip()!r}", flush=True)
            if len(times) < 3 or times[-1] - times[0] <= 0:
                return f"{len(times)} token events, not a stream"
            return None

        check("cpu image: GET /ready answers 200 (embedded engine, built-in model)", ready)
        check("cpu image: real text from the built-in model, streamed per token", real_text)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("double").add_argument("port_file", type=Path)
    commands.add_parser("api").add_argument("url")
    drain = commands.add_parser("drain")
    drain.add_argument("url")
    drain.add_argument("signal_command", nargs=argparse.REMAINDER)
    commands.add_parser("cpu").add_argument("url")
    arguments = parser.parse_args()
    if arguments.command == "double":
        return run_double(arguments.port_file)
    if arguments.command == "api":
        return check_api(arguments.url)
    if arguments.command == "drain":
        command = [word for word in arguments.signal_command if word != "--"]
        return check_drain(arguments.url, command)
    return check_cpu(arguments.url)


if __name__ == "__main__":
    sys.exit(main())
