"""Run the Ollama double in its own process (so it does not share a GIL with the load generator).

    .venv/bin/python benchmarks/_double_process.py --tokens 64 --delay 0.02

Prints the double's base URL on stdout (one line), then serves until stdin closes or SIGTERM.
Every ``/api/generate`` and ``/api/chat`` request is answered with the same script.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.ollama_double import OllamaDouble, Script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3.2")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each token")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with OllamaDouble.running(models=[args.model]) as double:
        double.default_script = Script(tokens=[" tok"] * args.tokens, delay_s=args.delay)
        print(double.base_url, flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()


if __name__ == "__main__":
    main()
