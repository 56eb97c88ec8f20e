"""Hand-written HTTP/1.1 pool against aiohttp: server CPU per streamed token, same minutes.

    .venv/bin/python benchmarks/ab_client.py [--rounds 4] [--segment 4] [--slow-segment 8]
        [--only REGEX] [--each] [--quick]

llmserve reads Ollama's streams through ``backends/_http1.py``, a small client written for that
one call. The question: would aiohttp (maintained, C parser, keep-alive pool) cost the same?
Both run at once, as two ``llmserve serve`` processes on the same double, database and load
generator: one as shipped, one started through ``benchmarks/_serve_aiohttp.py``, which puts
``benchmarks/_aiohttp_pool.py`` (the pool's interface on ``aiohttp.ClientSession``) in the
pool's place. Nothing else differs. Each case alternates segments, hand-written then aiohttp,
then aiohttp then hand-written, ... (``--rounds`` per side), so both see the same noise from the
shared machine; server CPU is read from ``/proc/<pid>/stat`` around each segment, as in
``load.py``, and divided by the requests and their 64 tokens.

Cases (``load.py``'s requests; streamed, 64 tokens): ``/api/v1/generate`` and the chat
conversation on ``/api/v1/chat``, each at concurrency 1 and 16 against the zero-delay double and
at 16 against the 20 ms/token double (one decoding step for all streams).

Reported per case and side: segments, requests, errors, req/s, p50 time to first token, the
median server CPU per token over the segments and its range; then the ratio aiohttp /
hand-written of the medians, and the median of the ratios of each round's two adjacent segments.
``--each`` also prints every segment. Before measuring, one request per kind and server is
checked, and the aiohttp server's log must show that its pool was the one in use.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    ADMIN_URL,
    benchmark_database,
    load_average,
    log,
    print_table,
    setup_logging,
)
from benchmarks.load import (
    DOUBLES,
    TOKENS,
    LoadGen,
    Scenario,
    bench_server_env,
    check_answers,
    command,
    cpu_seconds,
    create_key,
    double_process,
)
from tests._server import running_server

HERE = Path(__file__).resolve().parent
SIDES = {
    "hand-written": [sys.executable, "-m", "llmserve"],
    "aiohttp": [sys.executable, str(HERE / "_serve_aiohttp.py")],
}
AIOHTTP_MARK = "generation pool: aiohttp"
CASES = [
    Scenario("generate c=1", True, 1),
    Scenario("generate c=16", True, 16),
    Scenario("generate c=16, 20 ms/token", True, 16, "step"),
    Scenario("chat c=1", True, 1, api="chat"),
    Scenario("chat c=16", True, 16, api="chat"),
    Scenario("chat c=16, 20 ms/token", True, 16, "step", api="chat"),
]


@dataclass
class Side:
    per_token: list[float] = field(default_factory=list)  # µs per token, one per segment
    ttft: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    wall: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--rounds", type=int, help="segments per side and case (default 4)")
    parser.add_argument("--segment", type=float, help="seconds per zero-delay segment (4)")
    parser.add_argument("--slow-segment", type=float, help="seconds per 20 ms segment (8)")
    parser.add_argument(
        "--only", default="", help="the cases whose name matches this regular expression"
    )
    parser.add_argument("--each", action="store_true", help="also print every segment")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny segments")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="where to create the throwaway DB")
    args = parser.parse_args()
    cases = [case for case in CASES if re.search(args.only, case.name)]
    if not cases:
        parser.error(f"no case name matches {args.only!r}")
    rounds = args.rounds or (2 if args.quick else 4)
    segment = args.segment or (0.2 if args.quick else 4.0)
    slow_segment = args.slow_segment or (0.6 if args.quick else 8.0)
    warmup = 0.0 if args.quick else 1.0
    setup_logging()
    kinds = [kind for kind in DOUBLES if any(case.double == kind for case in cases)]
    results = {(case.name, side): Side() for case in cases for side in SIDES}
    each: list[list[object]] = []
    load_before = load_average()
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(benchmark_database("", args.admin_url))
        key = create_key(database_url)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        targets: dict[str, dict[str, dict]] = {}
        for kind in kinds:
            _, url = stack.enter_context(double_process(DOUBLES[kind][0], *DOUBLES[kind][1]))
            env = bench_server_env(database_url, url)
            targets[kind] = {}
            for side, argv in SIDES.items():
                server = stack.enter_context(running_server(env, tmp, command=tuple(argv)))
                apis = {case.api for case in cases if case.double == kind}
                check_answers(url, server.base_url, key, apis)
                if (AIOHTTP_MARK in server.log()) != (side == "aiohttp"):
                    raise RuntimeError(f"the {side} server used the wrong pool:\n{server.log()}")
                targets[kind][side] = {
                    "url": server.base_url,
                    "headers": {"Authorization": f"Bearer {key}"},
                    "pid": server.process.pid,
                }
        gen = LoadGen()
        stack.callback(gen.close)
        started = time.monotonic()
        for case in cases:
            log.info("  %s", case.name)
            duration = slow_segment if case.slow else segment
            for r in range(rounds):
                order = list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
                for side in order:
                    target = targets[case.double][side]
                    cmd = command(case, "llmserve", target)
                    if r == 0 and warmup:
                        gen.run(**cmd, duration=warmup)
                    before = cpu_seconds(target["pid"])
                    res = gen.run(**cmd, duration=duration)
                    used = cpu_seconds(target["pid"]) - before
                    if res["errors"]:
                        log.warning(
                            "    %s: %d errors, last %s", side, res["errors"], res.get("last_error")
                        )
                    n = res["requests"]
                    micros = used / n / TOKENS * 1e6 if n else 0.0
                    tally = results[(case.name, side)]
                    tally.per_token.append(micros)
                    tally.ttft += res["ttft"]
                    tally.requests += n
                    tally.errors += res["errors"]
                    tally.wall += res["wall"]
                    each.append([case.name, r, side, n, res["errors"], n / res["wall"], micros])
        elapsed = time.monotonic() - started
    load_after = load_average()
    print(
        f"\nHand-written pool vs aiohttp, {rounds} segment(s) per side and case, {segment} s per "
        f"segment ({slow_segment} s at 20 ms/token), {elapsed:.0f} s of load; load average "
        f"before {load_before}, after {load_after}\n"
    )
    report(results, cases)
    if args.each:
        print()
        print_table(("case", "round", "side", "requests", "errors", "req/s", "µs/token"), each)


def report(results: dict[tuple[str, str], Side], cases: list[Scenario]) -> None:
    rows: list[list[object]] = []
    for case in cases:
        hand, other = results[(case.name, "hand-written")], results[(case.name, "aiohttp")]
        for side, t in (("hand-written", hand), ("aiohttp", other)):
            median = statistics.median(t.per_token)
            ratio = pairwise = ""
            if side == "aiohttp" and statistics.median(hand.per_token):
                ratio = f"{median / statistics.median(hand.per_token):.2f}"
                pairs = [b / a for a, b in zip(hand.per_token, other.per_token, strict=True) if a]
                pairwise = f"{statistics.median(pairs):.2f}" if pairs else ""
            rows.append(
                [
                    case.name,
                    side,
                    len(t.per_token),
                    t.requests,
                    t.errors,
                    t.requests / t.wall if t.wall else 0.0,
                    statistics.median(t.ttft) if t.ttft else "-",
                    median,
                    f"{min(t.per_token):.1f} to {max(t.per_token):.1f}",
                    ratio,
                    pairwise,
                ]
            )
    print_table(
        (
            "case",
            "side",
            "segments",
            "requests",
            "errors",
            "req/s",
            "TTFT p50 ms",
            "server CPU µs/token",
            "range",
            "ratio",
            "ratio per round",
        ),
        rows,
    )


if __name__ == "__main__":
    main()
