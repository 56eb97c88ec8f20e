"""Profile ``llmserve serve`` under load with cProfile (py-spy and pyinstrument are not installed).

    .venv/bin/python benchmarks/_profile_server.py --stream --concurrency 64 --duration 10
    .venv/bin/python benchmarks/_profile_server.py --stream --api chat --delay 0.02 --calls

Same set-up as ``load.py`` (double process with 64 tokens, auth on, request logging on, throwaway
PostgreSQL; ``--api`` chooses ``load.py``'s request: ``generate``, ``chat`` or ``tools``), but
the server runs as ``python -m cProfile -o FILE -m llmserve serve``; after the load it is stopped
with SIGTERM (uvicorn exits normally, so cProfile writes its file) and the top functions by own
time and by cumulative time are printed. cProfile slows Python code ~1.5-2x, so read the shares,
not the absolute times. ``--checkout DIR`` profiles another checkout (an older commit, as
``ab.py`` runs it; it must understand the chosen ``--api``).
"""

from __future__ import annotations

import argparse
import contextlib
import pstats
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ADMIN_URL, benchmark_database, setup_logging
from benchmarks.load import (
    APIS,
    LoadGen,
    Scenario,
    bench_server_env,
    command,
    create_key,
    double_process,
)
from tests._server import ServerProcess, _wait_healthy, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--api", default="generate", choices=sorted(APIS), help="load.py's request kind"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--delay", type=float, default=0.0, help="the double's seconds per token")
    parser.add_argument(
        "--per-stream", action="store_true", help="the double's tokens arrive per stream"
    )
    parser.add_argument(
        "--calls", action="store_true", help="also list functions by call count (per token?)"
    )
    parser.add_argument("--out", default="", help="keep the .prof file here")
    parser.add_argument(
        "--checkout", default="", help="profile this llmserve checkout instead (PYTHONPATH)"
    )
    args = parser.parse_args()
    setup_logging()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(benchmark_database("", ADMIN_URL))
        key = create_key(url)
        _, double_url = stack.enter_context(
            double_process(args.delay, *(["--per-stream"] if args.per_stream else []))
        )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        prof = Path(args.out) if args.out else tmp / "server.prof"
        port = free_port()
        extra = {"PYTHONPATH": str(Path(args.checkout).resolve())} if args.checkout else {}
        env = bench_server_env(url, double_url, HOST_BIND_IP="127.0.0.1", **extra)
        log_path = tmp / "server.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(prof),
                    "-m",
                    "llmserve",
                    "serve",
                    "--port",
                    str(port),
                ],
                env=env,
                cwd=tmp,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
        try:
            _wait_healthy(server)
            gen = LoadGen()
            scenario = Scenario("profile", args.stream, args.concurrency, api=args.api)
            target = {"url": server.base_url, "headers": {"Authorization": f"Bearer {key}"}}
            cmd = command(scenario, "llmserve", target)
            res = gen.run(**cmd, duration=args.duration)
            gen.close()
            print(
                f"{res['requests']} requests, {res['errors']} errors, "
                f"{res['requests'] / res['wall']:.1f} req/s under cProfile"
            )
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        stats = pstats.Stats(str(prof))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        if args.calls:
            stats.sort_stats("ncalls").print_stats(args.top)


if __name__ == "__main__":
    main()
