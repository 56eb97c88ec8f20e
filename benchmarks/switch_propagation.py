"""How fast a model switch made through one server reaches another, and what resolving costs.

Part 1: two real ``llmserve serve`` processes (A and B) on one throwaway PostgreSQL database and
the Ollama double, which has two models installed. ``--switches`` times: switch through A
(``POST /api/v1/models/switch/{name}``, alternating between the two models), then poll B's
``GET /api/v1/models/active`` every ``--poll-ms`` until it reports the new model. The delay is
counted from the moment the switch request was sent. Before each switch the script waits a
random time (seeded) shorter than B's refresh period, so switches land at every phase of B's
refresh loop instead of always just after a refresh.

Part 2: the per-request cost of resolving the active model, which a generation does by reading
``ActiveModelService.current`` (in memory; a background task refreshes it). Timed with
``timeit`` on a real service started against the same database; next to it, for scale, the
single-row SELECT that a per-request database read would cost instead.

    .venv/bin/python benchmarks/switch_propagation.py
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import timeit
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    ADMIN_URL,
    benchmark_database,
    load_average,
    print_table,
    server_env,
    setup_logging,
    summary,
)
from llmserve.db import repositories
from llmserve.db.session import make_engine, make_sessions
from llmserve.names import same_model
from llmserve.services.active_model import ActiveModelService
from tests._server import ServerProcess, running_server
from tests.fakes.ollama_double import OllamaDouble

MODELS = ("llama3.2", "qwen2.5:0.5b")
TIMEOUT_S = 5.0


def active(client: httpx.Client, server: ServerProcess) -> str:
    response = client.get(server.base_url + "/api/v1/models/active")
    response.raise_for_status()
    return str(response.json()["model"])


def one_switch(
    client: httpx.Client, a: ServerProcess, b: ServerProcess, model: str, poll_s: float
) -> tuple[float, float, int]:
    """(switch request ms, propagation to B ms, polls) for one switch through A."""
    started = time.perf_counter()
    response = client.post(a.base_url + f"/api/v1/models/switch/{model}")
    switched = time.perf_counter()
    response.raise_for_status()
    polls = 0
    next_poll = switched
    while True:
        polls += 1
        seen = active(client, b)
        now = time.perf_counter()
        if same_model(seen, model):
            return (switched - started) * 1000, (now - started) * 1000, polls
        if now - started > TIMEOUT_S:
            raise RuntimeError(f"server B still reports {seen!r} {TIMEOUT_S} s after switching")
        next_poll += poll_s
        time.sleep(max(0.0, next_poll - time.perf_counter()))


def propagation(
    database_url: str, switches: int, poll_s: float, refresh_s: float, seed: int
) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    with OllamaDouble.running(models=MODELS) as double, tempfile.TemporaryDirectory() as tmp:
        env = server_env(
            DATABASE_URL=database_url,
            OLLAMA_BASE_URL=double.base_url,
            BUILT_IN_OLLAMA_MODEL=MODELS[0],
            ACTIVE_MODEL_REFRESH_S=str(refresh_s),
        )
        with (
            running_server(env, Path(tmp)) as a,
            running_server(env, Path(tmp)) as b,
            httpx.Client(timeout=10) as client,
        ):
            current = active(client, b)
            requests, delays = [], []
            for i in range(switches):
                # Alternate, starting with whichever model is not active now.
                target = MODELS[(i + (1 if same_model(current, MODELS[0]) else 0)) % 2]
                time.sleep(rng.uniform(0, refresh_s))
                request_ms, delay_ms, polls = one_switch(client, a, b, target, poll_s)
                requests.append(request_ms)
                delays.append(delay_ms)
                print(
                    f"switch {i + 1:2}: -> {target:13} B after {delay_ms:7.1f} ms ({polls} polls)",
                    file=sys.stderr,
                )
    return requests, delays


def resolve_cost(database_url: str, number: int) -> tuple[float, float, str]:
    """(µs per ``current`` read, µs per single-row SELECT, the value read)."""
    engine = make_engine(database_url)
    sessions = make_sessions(engine)
    try:
        service = ActiveModelService(sessions, MODELS[0])
        asyncio.run(service.start(follow=False))  # one real read from the database
        timer = timeit.Timer("service.current", globals={"service": service})
        in_memory = min(timer.repeat(repeat=5, number=number)) / number * 1e6

        def select_once() -> str | None:
            with sessions() as session:
                return repositories.get_setting(session, repositories.ACTIVE_MODEL_KEY)

        select_once()  # connect the pool first
        rounds = 500
        database = min(timeit.repeat(select_once, repeat=3, number=rounds)) / rounds * 1e6
        return in_memory, database, service.current
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--poll-ms", type=float, default=5.0, help="how often B is asked")
    parser.add_argument(
        "--refresh-s",
        type=float,
        default=None,
        help="ACTIVE_MODEL_REFRESH_S for both servers (default: the server's own default)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the pauses between switches")
    parser.add_argument("--timeit-number", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL URL to use (migrated, kept) instead of a throwaway database",
    )
    parser.add_argument(
        "--admin-url", default=ADMIN_URL, help="where to create the throwaway database"
    )
    args = parser.parse_args()
    setup_logging()
    from llmserve.settings import Settings

    refresh_s = args.refresh_s or Settings.model_fields["ACTIVE_MODEL_REFRESH_S"].default

    with benchmark_database(args.database_url, args.admin_url) as database_url:
        requests, delays = propagation(
            database_url, args.switches, args.poll_ms / 1000, refresh_s, args.seed
        )
        load = load_average()
        in_memory_us, select_us, value = resolve_cost(database_url, args.timeit_number)

    print(
        f"\nSwitch propagation, {args.switches} switches, two servers on PostgreSQL, "
        f"ACTIVE_MODEL_REFRESH_S={refresh_s}, poll every {args.poll_ms:g} ms, load {load}"
    )
    rows = []
    for label, values in (("switch request on A", requests), ("until B reports it", delays)):
        s = summary(values)
        rows.append((label, s["n"], s["median"], s["p90"], s["max"]))
    print_table(("measure", "n", "median ms", "p90 ms", "max ms"), rows)

    print(f"\nResolving the active model ({value!r}), per call")
    print_table(
        ("how", "µs per call"),
        [
            ("ActiveModelService.current (what generate does)", f"{in_memory_us:.3f}"),
            ("for scale: one single-row SELECT on PostgreSQL", f"{select_us:.0f}"),
        ],
    )


if __name__ == "__main__":
    main()
