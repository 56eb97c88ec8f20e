"""A/B: two llmserve checkouts side by side, against the same double, in the same minutes.

    .venv/bin/python benchmarks/ab.py --a ../old-checkout [--b .] [--stream] [--concurrency 16]
        [--delay 0.02] [--per-stream] [--segment 8] [--rounds 4] [--warmup 1]

``load.py`` compares llmserve with the double; this compares two versions of llmserve. On a
shared VM the absolute CPU figures drift by tens of percent within an hour (compare the direct
rows of two ``load.py`` runs), so a before/after taken at different times says little. Here
both servers run at once (same throwaway database, same double, same load generator as
``load.py``), each imports its own checkout (``PYTHONPATH``), and the segments alternate
A, B, B, A, ... The table gives each round and the medians: server CPU per request and per
64-token answer's token, and p50 time to first token (streams).

To get a checkout of an older commit: ``git worktree add /tmp/old <commit>``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ADMIN_URL, benchmark_database, print_table, setup_logging
from benchmarks.load import (
    TOKENS,
    LoadGen,
    bench_server_env,
    cpu_seconds,
    create_key,
    double_process,
)
from tests._server import running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="checkout A (its root directory)")
    parser.add_argument("--b", default=str(Path(__file__).resolve().parents[1]), help="checkout B")
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.0, help="the double's seconds per token")
    parser.add_argument("--per-stream", action="store_true", help="see _fast_double.py")
    parser.add_argument("--segment", type=float, default=5.0, help="seconds per segment")
    parser.add_argument("--rounds", type=int, default=4, help="segments per side")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load per server before round 1"
    )
    args = parser.parse_args()
    setup_logging()
    checkouts = {"A": str(Path(args.a).resolve()), "B": str(Path(args.b).resolve())}
    for root in checkouts.values():
        if not (Path(root) / "llmserve" / "__init__.py").is_file():
            parser.error(f"{root} is not an llmserve checkout")
    extra = ["--per-stream"] if args.per_stream else []
    per_request: dict[str, list[float]] = {"A": [], "B": []}
    ttft: dict[str, list[float]] = {"A": [], "B": []}
    rows = []
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(benchmark_database("", ADMIN_URL))
        key = create_key(database_url)
        _, double_url = stack.enter_context(double_process(args.delay, *extra))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = {}
        for name, root in checkouts.items():
            env = bench_server_env(database_url, double_url, PYTHONPATH=root)
            servers[name] = stack.enter_context(running_server(env, tmp))
        gen = LoadGen()
        stack.callback(gen.close)
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                server = servers[name]
                cmd = {
                    "url": server.base_url + "/api/v1/generate",
                    "headers": {"Authorization": f"Bearer {key}"},
                    "stream": args.stream,
                    "body": {"prompt": "hi", "stream": args.stream},
                    "concurrency": args.concurrency,
                }
                if r == 0 and args.warmup > 0:
                    gen.run(**cmd, duration=args.warmup)
                before = cpu_seconds(server.process.pid)
                result = gen.run(**cmd, duration=args.segment)
                used = cpu_seconds(server.process.pid) - before
                micros = used / result["requests"] * 1e6 if result["requests"] else 0.0
                per_request[name].append(micros)
                ttft[name] += result["ttft"]
                rows.append(
                    [name, r, result["requests"], result["errors"], micros, micros / TOKENS]
                )
    print(f"\nA = {checkouts['A']}\nB = {checkouts['B']}\n")
    for name in ("A", "B"):
        median = statistics.median(per_request[name])
        first = f"{statistics.median(ttft[name]):.2f}" if ttft[name] else "-"
        rows.append([f"{name} median", "", "", "", median, median / TOKENS, first])
    for row in rows:
        row.extend([""] * (7 - len(row)))
    print_table(
        ("server", "round", "requests", "errors", "CPU µs/req", "µs/token", "TTFT p50 ms"), rows
    )


if __name__ == "__main__":
    main()
