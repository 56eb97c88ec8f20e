"""The key policy's cost: one ``llmserve serve``, a plain key and a key with every limit,
segments alternating between the two in the same minutes.

``load.py``'s ``limited key`` rows run after the plain rows, minutes apart; on a shared machine
the spread between such rows is as large as the policy's cost. Here each round runs the plain
key, then the limited key (then the other way round), on the same server, so both sides see the
same machine. The limited key has every limit (rpm, tpm, concurrency, a monthly budget, allowed
models), all far beyond what a run reaches: every request is admitted, counted and charged.

    .venv/bin/python benchmarks/policy_cost.py               # 8 rounds of 2.5 s per side
    .venv/bin/python benchmarks/policy_cost.py --rounds 2    # a quick look

Server CPU is utime+stime of the ``llmserve serve`` process (``/proc/<pid>/stat``) over each
segment, divided by its requests; the table gives the total over all segments of a side and the
median of the rounds' differences (limited minus plain), which a noisy neighbour moves least.

The last row takes HTTP out: ``PolicyService`` alone in this process, ``--concurrency`` tasks
that admit, do ~300 µs of work each (standing in for the server's own, so the event loop is as
busy as a server's), and settle, against the same PostgreSQL; process CPU per request with the
limited key against the same tasks without a policy, alternating rounds. Its spread between runs
is far smaller than the HTTP rows', whose closed loop turns every change of latency into a
change of throughput and of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    ADMIN_URL,
    benchmark_database,
    load_average,
    print_table,
    setup_logging,
)
from benchmarks.load import (
    APIS,
    DOUBLES,
    MODEL,
    LoadGen,
    bench_server_env,
    cpu_seconds,
    create_key,
    create_limited_key,
    double_process,
)
from tests._server import running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds per row (default 8)")
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per segment")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument(
        "--requests", type=int, default=3000, help="requests per side and round, in-process row"
    )
    args = parser.parse_args()
    setup_logging()
    load_before = load_average()
    api = APIS["generate"]
    rows = []
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(benchmark_database("", args.admin_url))
        keys = {"plain": create_key(database_url), "limited": create_limited_key(database_url)}
        _, double_url = stack.enter_context(
            double_process(DOUBLES["burst"][0], *DOUBLES["burst"][1])
        )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(
            running_server(bench_server_env(database_url, double_url, max_concurrent=64), tmp)
        )
        gen = LoadGen()
        stack.callback(gen.close)
        pid = server.process.pid
        for stream in (False, True):
            totals = {side: [0.0, 0] for side in keys}  # CPU seconds, requests
            differences = []
            for r in range(args.rounds):
                per_request = {}
                for side in ("plain", "limited") if r % 2 == 0 else ("limited", "plain"):
                    cmd = {
                        "url": server.base_url + api.path,
                        "headers": {"Authorization": f"Bearer {keys[side]}"},
                        "stream": stream,
                        "body": {**api.body, "stream": stream},
                        "concurrency": args.concurrency,
                        "mark": api.mark,
                    }
                    if r == 0:
                        gen.run(**cmd, duration=0.5)  # warm up
                    before = cpu_seconds(pid)
                    result = gen.run(**cmd, duration=args.duration)
                    spent = cpu_seconds(pid) - before
                    if result["errors"]:
                        raise RuntimeError(f"{side}: {result['errors']} errors: {result}")
                    totals[side][0] += spent
                    totals[side][1] += result["requests"]
                    per_request[side] = spent / result["requests"] * 1e6
                differences.append(per_request["limited"] - per_request["plain"])
            plain, limited = (totals[s][0] / totals[s][1] * 1e6 for s in ("plain", "limited"))
            rows.append(
                (
                    f"{'stream' if stream else 'non-stream'} c={args.concurrency}",
                    totals["plain"][1],
                    totals["limited"][1],
                    plain,
                    limited,
                    limited - plain,
                    statistics.median(differences),
                )
            )
        server.stop()
        rows.append(in_process(database_url, args.rounds, args.requests, args.concurrency))
    print(
        f"\n{args.rounds} rounds x {args.duration} s per side; load average before "
        f"{load_before}, after {load_average()}\n"
    )
    print_table(
        (
            "row",
            "plain requests",
            "limited requests",
            "plain µs/req",
            "limited µs/req",
            "added µs/req",
            "median of rounds' added",
        ),
        rows,
    )


def in_process(database_url: str, rounds: int, requests: int, concurrency: int) -> tuple[Any, ...]:
    """The in-process row (see the module doc): (name, requests per side, …, µs per request)."""
    from llmserve.db.session import make_engine, make_sessions
    from llmserve.services.keys import KeyService, Principal, policy_of
    from llmserve.services.policy import PolicyService

    engine = make_engine(database_url)
    record = next(k for k in KeyService(make_sessions(engine)).list() if k.name == "bench-limited")
    principal = Principal(record.id, record.name, False, policy_of(record))

    async def side(limited: bool) -> float:
        service = PolicyService(engine) if limited else None
        if service is not None:
            await service.start()
        left = requests

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                ticket = await service.admit(principal, MODEL) if service else None
                _work(0.0003)
                await asyncio.sleep(0)  # as a server's request yields to others
                if service is not None:
                    service.settle(ticket, 64)

        before = time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        if service is not None:
            await service.flush()
        spent = time.process_time() - before
        if service is not None:
            await service.stop()
        return spent / requests * 1e6

    try:
        asyncio.run(side(True))  # warm up: the connection, the key's rows
        per_request: dict[str, list[float]] = {"plain": [], "limited": []}
        for r in range(rounds):
            for name in ("plain", "limited") if r % 2 == 0 else ("limited", "plain"):
                per_request[name].append(asyncio.run(side(name == "limited")))
    finally:
        engine.dispose()
    plain, limited = (statistics.mean(per_request[s]) for s in ("plain", "limited"))
    added = [b - a for a, b in zip(per_request["plain"], per_request["limited"], strict=True)]
    return (
        f"in-process c={concurrency}",
        requests * rounds,
        requests * rounds,
        plain,
        limited,
        limited - plain,
        statistics.median(added),
    )


def _work(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


if __name__ == "__main__":
    main()
