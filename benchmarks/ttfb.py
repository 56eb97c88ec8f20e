"""Time to first byte through ``/api/v1/generate`` (stream) versus the Ollama double directly.

Starts the Ollama double (zero delay, 16 tokens per answer) and a real ``llmserve serve`` process
(one worker, request logging on) on a throwaway PostgreSQL database, as in production, unless
``--database-url`` names another one. Warms both paths up, then alternates one direct request and
one request through llmserve so that both see the same machine state. "First byte" is the first
body chunk: the double's first NDJSON line, llmserve's first SSE event.

    .venv/bin/python benchmarks/ttfb.py                # 200 requests each side
    .venv/bin/python benchmarks/ttfb.py --database-url sqlite:////tmp/bench.db
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    ADMIN_URL,
    benchmark_database,
    count_request_logs,
    load_average,
    print_table,
    server_env,
    setup_logging,
    summary,
)
from tests._server import running_server
from tests.fakes.ollama_double import OllamaDouble, Script

MODEL = "llama3.2"
TOKENS = 16


def first_byte_ms(client: httpx.Client, url: str, body: dict[str, object]) -> float:
    """Milliseconds until the first body chunk; the rest is read so the connection is reused."""
    started = time.perf_counter()
    elapsed: float | None = None
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for _ in response.iter_raw():
            if elapsed is None:
                elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError(f"{url} answered with an empty body")
    return elapsed * 1000.0


def check_proxied_stream(client: httpx.Client, url: str) -> None:
    """One request read in full: the benchmark must time a real, complete generation."""
    with client.stream("POST", url, json={"prompt": "hi", "stream": True}) as response:
        response.raise_for_status()
        text = response.read().decode()
    events = text.count('data: {"response":')
    if events != TOKENS or not text.endswith("data: {}\n\n"):
        raise RuntimeError(f"unexpected stream from llmserve ({events} token events):\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests per side")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per side first")
    parser.add_argument(
        "--database-url",
        default="",
        help="use this database (migrated, kept) instead of a throwaway PostgreSQL database",
    )
    parser.add_argument(
        "--admin-url", default=ADMIN_URL, help="where to create the throwaway database"
    )
    args = parser.parse_args()
    setup_logging()

    with (
        benchmark_database(args.database_url, args.admin_url) as database_url,
        OllamaDouble.running(models=[MODEL]) as double,
        tempfile.TemporaryDirectory() as tmp,
    ):
        double.default_script = Script(tokens=["tok"] * TOKENS)
        env = server_env(
            DATABASE_URL=database_url, OLLAMA_BASE_URL=double.base_url, BUILT_IN_OLLAMA_MODEL=MODEL
        )
        with running_server(env, Path(tmp)) as server, httpx.Client(timeout=30) as client:
            direct_url = double.base_url + "/api/generate"
            proxied_url = server.base_url + "/api/v1/generate"
            direct_body = {"model": MODEL, "prompt": "hi", "stream": True}
            proxied_body = {"prompt": "hi", "stream": True}
            check_proxied_stream(client, proxied_url)
            for _ in range(args.warmup):
                first_byte_ms(client, direct_url, direct_body)
                first_byte_ms(client, proxied_url, proxied_body)
            direct, proxied = [], []
            for _ in range(args.requests):
                direct.append(first_byte_ms(client, direct_url, direct_body))
                proxied.append(first_byte_ms(client, proxied_url, proxied_body))
            load = load_average()
        logged = count_request_logs(database_url)  # the server has flushed its log on exit

    database = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    print(f"\nTTFB, streamed, {args.requests} requests per side, database {database}, load {load}")
    rows = []
    for label, values in (("Ollama double direct", direct), ("through llmserve", proxied)):
        s = summary(values)
        rows.append((label, s["n"], s["median"], s["p90"], s["min"], s["max"]))
    print_table(("path", "n", "median ms", "p90 ms", "min ms", "max ms"), rows)
    added = statistics.median(proxied) - statistics.median(direct)
    print(f"\nadded by llmserve (difference of medians): {added:.2f} ms")
    print(f"request-log rows in the database after the run: {logged}")


if __name__ == "__main__":
    main()
