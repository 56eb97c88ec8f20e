"""Time to first byte through ``/api/v1/generate`` (stream) versus the Ollama double directly.

Starts the double (zero delay) and a real ``llmserve serve`` process (one worker, PostgreSQL or
SQLite from DATABASE_URL, request logging on), then alternates direct and proxied requests so
both see the same machine state. Reports medians and p90 in milliseconds.

    poetry run python benchmarks/ttfb.py --requests 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._server import running_server
from tests.fakes.ollama_double import OllamaDouble, Script


def first_byte_ms(client: httpx.Client, url: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for _ in response.iter_raw():
            elapsed = time.perf_counter() - started
            break
        for _ in response.iter_raw():
            pass
    return elapsed * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    args = parser.parse_args()
    with OllamaDouble.running(models=["llama3.2"]) as double, tempfile.TemporaryDirectory() as tmp:
        double.default_script = Script(tokens=["tok"] * 16)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
            "OLLAMA_BASE_URL": double.base_url,
            "BUILT_IN_OLLAMA_MODEL": "llama3.2",
            "LOG_LEVEL": "WARNING",
        }
        with running_server(env, Path(tmp)) as server, httpx.Client(timeout=30) as client:
            direct_body = {"model": "llama3.2", "prompt": "hi", "stream": True}
            proxied_body = {"prompt": "hi", "stream": True}
            for _ in range(20):  # warm up both paths
                first_byte_ms(client, double.base_url + "/api/generate", direct_body)
                first_byte_ms(client, server.base_url + "/api/v1/generate", proxied_body)
            direct, proxied = [], []
            for _ in range(args.requests):
                direct.append(first_byte_ms(client, double.base_url + "/api/generate", direct_body))
                proxied.append(
                    first_byte_ms(client, server.base_url + "/api/v1/generate", proxied_body)
                )
    for label, values in (("ollama double", direct), ("through llmserve", proxied)):
        values.sort()
        p90 = values[int(len(values) * 0.9) - 1]
        print(f"{label:18} median {statistics.median(values):6.2f} ms   p90 {p90:6.2f} ms")
    print(f"added median TTFB: {statistics.median(proxied) - statistics.median(direct):.2f} ms")


if __name__ == "__main__":
    main()
