"""Load: the Ollama double directly versus through llmserve, side by side, alternating.

Starts, each in its own process: the Ollama double (64-token answers, zero per-token delay), two
doubles with 20 ms per token, one ``llmserve serve`` per double (one uvicorn worker, auth on,
request logging on, a throwaway PostgreSQL database) and a closed-loop load generator
(``benchmarks/_loadgen.py``). For each scenario it alternates segments: direct, through
llmserve, then llmserve, direct, ... Then it runs the whole pass a second time to see whether
the server's memory grows. Scenarios:

* ``/api/v1/generate`` (direct: the double's ``/api/generate``): non-stream and stream at
  concurrency 1, 16, 64; stream at 16 with 20 ms per token (one step for all streams, and
  independent streams);
* ``chat``: a conversation (system, three earlier exchanges, a user message) streamed through
  ``/api/v1/chat`` (direct: the double's ``/api/chat``) at 1, 16, 64, and at 16 with 20 ms/token;
* ``tool calls``: ``/v1/chat/completions`` offering two tools, streamed (direct: ``/api/chat``
  with the same tools); the double answers 63 text chunks and one whole call. At 16, in a burst
  and with 20 ms/token;
* ``ollama chat``: the same conversation through llmserve's Ollama API, ``/api/chat`` on both
  sides (the same request an Ollama client sends), NDJSON in and out, at 1, 16, 64 and at 16
  with 20 ms/token;
* ``openai chat``, ``anthropic messages``, ``openai responses``: the same conversation streamed
  through ``/v1/chat/completions``, ``/v1/messages`` and ``/v1/responses`` (direct: the double's
  ``/api/chat``), at 1 and 64: the three faces side by side, for their server CPU per token;
* ``limited key``: non-stream and stream generate at 16 with a key that has every limit (rpm,
  tpm, concurrency, a monthly budget, allowed models), all too high to be reached: against the
  same rows with the plain key, the cost of the key policy per request.

    .venv/bin/python benchmarks/load.py            # full run, about 7 minutes
    .venv/bin/python benchmarks/load.py --quick    # smoke run, a few seconds of load
    .venv/bin/python benchmarks/load.py --only "openai chat" --only messages --only responses

Server CPU is utime+stime of the ``llmserve serve`` process from ``/proc/<pid>/stat`` before and
after each llmserve segment, divided by the segment's requests (and by the 64 chunks each answer
has upstream, tool call included, for µs/token).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    ADMIN_URL,
    benchmark_database,
    count_request_logs,
    load_average,
    log,
    percentile,
    print_table,
    server_env,
    setup_logging,
)
from tests._server import ServerProcess, running_server

MODEL = "llama3.2"
TOKENS = 64
HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    double: str = "burst"  # which double (and its own server) answers: see DOUBLES
    api: str = "generate"  # what is asked: see APIS
    limited: bool = False  # llmserve side: a key with every limit (never reached), see main()

    @property
    def slow(self) -> bool:
        return self.double != "burst"


@dataclass(frozen=True)
class Api:
    """One kind of request: to the double (direct) and to llmserve, and the bytes that mark a
    token in each answer (the load generator's first-token time)."""

    direct_path: str
    direct_body: dict[str, Any]
    direct_mark: str
    path: str
    body: dict[str, Any]
    mark: str


SYSTEM = "You are a concise assistant. Answer in one short paragraph."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And roughly how many people live there?"},
    {"role": "assistant", "content": "About 2.1 million in the city, 12 million in the region."},
    {"role": "user", "content": "Is it a good place to visit in winter?"},
    {"role": "assistant", "content": "Yes: fewer crowds, museums, and mild but grey weather."},
    {"role": "user", "content": "Suggest three things to do there on a rainy day."},
]
TOOL_QUESTION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What's the weather in Paris right now, and what time is it?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name."},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "description": "IANA name."}},
                "required": ["zone"],
            },
        },
    },
]
CONTENT_MARK = '"content":" tok"'  # a text token in /api/chat lines and OpenAI chat chunks
MESSAGES_MARK = '"text":" tok"'  # in Anthropic's text_delta events
RESPONSES_MARK = '"delta":" tok"'  # in the Responses API's output_text.delta events
APIS = {
    "generate": Api(
        "/api/generate",
        {"model": MODEL, "prompt": "hi"},
        '"response"',
        "/api/v1/generate",
        {"prompt": "hi"},
        '"response"',
    ),
    "chat": Api(
        "/api/chat",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
        "/api/v1/chat",
        {"messages": CONVERSATION},
        '"response"',
    ),
    "tools": Api(
        "/api/chat",
        {"model": MODEL, "messages": TOOL_QUESTION, "tools": TOOLS},
        CONTENT_MARK,
        "/v1/chat/completions",
        {"model": MODEL, "messages": TOOL_QUESTION, "tools": TOOLS},
        CONTENT_MARK,
    ),
    "ollama": Api(
        "/api/chat",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
        "/api/chat",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
    ),
    "openai": Api(
        "/api/chat",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
        "/v1/chat/completions",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
    ),
    "messages": Api(
        "/api/chat",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
        "/v1/messages",
        {"model": MODEL, "max_tokens": 1000, "system": SYSTEM, "messages": CONVERSATION[1:]},
        MESSAGES_MARK,
    ),
    "responses": Api(
        "/api/chat",
        {"model": MODEL, "messages": CONVERSATION},
        CONTENT_MARK,
        "/v1/responses",
        {"model": MODEL, "instructions": SYSTEM, "input": CONVERSATION[1:]},
        RESPONSES_MARK,
    ),
}


# The doubles, each with its own llmserve: (per-token delay, extra double arguments).
DOUBLES = {
    "burst": (0.0, ()),
    # 20 ms per token, one decoding step for all streams in progress (as Ollama's runner batches
    # parallel sequences): the tokens of the 16 streams arrive together, every 20 ms.
    "step": (0.02, ()),
    # 20 ms per token from each stream's own start: the tokens of different streams arrive
    # independently, spread over the 20 ms, so nearly every token is a wake-up of its own.
    "independent": (0.02, ("--per-stream",)),
}


SCENARIOS = [
    Scenario("non-stream c=1", False, 1),
    Scenario("non-stream c=16", False, 16),
    Scenario("non-stream c=64", False, 64),
    Scenario("stream c=1", True, 1),
    Scenario("stream c=16", True, 16),
    Scenario("stream c=64", True, 64),
    Scenario("stream c=16, 20 ms/token", True, 16, "step"),
    Scenario("stream c=16, 20 ms/token, independent", True, 16, "independent"),
    Scenario("chat c=1", True, 1, api="chat"),
    Scenario("chat c=16", True, 16, api="chat"),
    Scenario("chat c=64", True, 64, api="chat"),
    Scenario("chat c=16, 20 ms/token", True, 16, "step", api="chat"),
    Scenario("tool calls c=16", True, 16, api="tools"),
    Scenario("tool calls c=16, 20 ms/token", True, 16, "step", api="tools"),
    Scenario("non-stream c=16, limited key", False, 16, limited=True),
    Scenario("stream c=16, limited key", True, 16, limited=True),
    Scenario("ollama chat c=1", True, 1, api="ollama"),
    Scenario("ollama chat c=16", True, 16, api="ollama"),
    Scenario("ollama chat c=64", True, 64, api="ollama"),
    Scenario("ollama chat c=16, 20 ms/token", True, 16, "step", api="ollama"),
    Scenario("openai chat c=1", True, 1, api="openai"),
    Scenario("openai chat c=64", True, 64, api="openai"),
    Scenario("anthropic messages c=1", True, 1, api="messages"),
    Scenario("anthropic messages c=64", True, 64, api="messages"),
    Scenario("openai responses c=1", True, 1, api="responses"),
    Scenario("openai responses c=64", True, 64, api="responses"),
]


@dataclass
class Tally:
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0  # the process answering: llmserve, or the double when direct

    def add(self, r: dict, server_cpu: float) -> None:
        self.latency += r["latency"]
        self.ttft += r["ttft"]
        self.requests += r["requests"]
        self.errors += r["errors"]
        self.wall += r["wall"]
        self.client_cpu += r["client_cpu"]
        self.server_cpu += server_cpu

    @property
    def rps(self) -> float:
        return self.requests / self.wall if self.wall else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


@contextlib.contextmanager
def double_process(delay: float, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "_fast_double.py"),
            "--tokens",
            str(TOKENS),
            "--delay",
            str(delay),
            "--model",
            MODEL,
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the double did not start (got {url!r})")
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(10)


class LoadGen:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_loadgen.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)


def bench_server_env(
    database_url: str, double_url: str, *, max_concurrent: int = 64, **extra: str
) -> dict[str, str]:
    """``llmserve serve``'s environment in every load benchmark: auth on, request log on, and
    admission control wide enough to admit the whole load."""
    return server_env(
        DATABASE_URL=database_url,
        OLLAMA_BASE_URL=double_url,
        BUILT_IN_OLLAMA_MODEL=MODEL,
        AUTH_REQUIRED="true",
        MAX_CONCURRENT_GENERATIONS=str(max_concurrent),
        MAX_QUEUED_GENERATIONS="256",
        **extra,
    )


def create_key(database_url: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "llmserve", "keys", "create", "bench"],
        env=server_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1].strip()


def create_limited_key(database_url: str) -> str:
    """A key with every limit of the key policy, each far beyond what a run reaches."""
    from llmserve.db.session import make_engine, make_sessions
    from llmserve.services.keys import KeyService
    from llmserve.services.policy import KeyPolicy

    engine = make_engine(database_url)
    try:
        policy = KeyPolicy(
            rpm=10**8,
            tpm=2 * 10**9,
            concurrency=10_000,
            budget=10**15,
            budget_period="month",
            models=("llama3*",),
        )
        key, _ = KeyService(make_sessions(engine)).create(
            "bench-limited", policy=policy, actor="benchmark"
        )
    finally:
        engine.dispose()
    return key


def check_answers(
    direct: str, proxied: str, key: str, apis: set[str], *, at_once: bool = False
) -> None:
    """One request per side and kind, checked: 64 tokens each (the tool answer: 63 and a call);
    for generate also non-stream. ``at_once``: the kinds side by side (a smoke run's shortcut:
    at 20 ms/token each answer takes 1.3 s), else one after the other."""
    auth = {"Authorization": f"Bearer {key}"}
    checks = [
        functools.partial(_check_stream, direct, proxied, auth, name) for name in sorted(apis)
    ]
    if "generate" in apis:
        checks.append(functools.partial(_check_non_stream, direct, proxied, auth))
    if not at_once:
        for check in checks:
            check()
        return
    with ThreadPoolExecutor(len(checks)) as pool:
        for done in [pool.submit(check) for check in checks]:
            done.result()


def _check_stream(direct: str, proxied: str, auth: dict[str, str], name: str) -> None:
    api = APIS[name]
    with httpx.Client(timeout=30) as c:
        text = c.post(direct + api.direct_path, json=api.direct_body).text
        lines = [line.replace(" ", "") for line in text.splitlines()]
        got = sum(1 for line in lines if '"done":false' in line)
        calls = sum(1 for line in lines if '"tool_calls"' in line)
        if got != TOKENS or calls != (name == "tools"):
            raise RuntimeError(f"direct {name}: {got} chunks, {calls} calls:\n{text[:500]}")
        r = c.post(proxied + api.path, json={**api.body, "stream": True}, headers=auth)
    r.raise_for_status()
    if name == "tools":
        got = r.text.count(CONTENT_MARK)
        ok = got == TOKENS - 1 and r.text.endswith("data: [DONE]\n\n")
        ok = ok and '"finish_reason":"tool_calls"' in r.text and "get_weather" in r.text
    elif name == "ollama":
        got = r.text.count(CONTENT_MARK)
        ok = got == TOKENS and '"done":true' in r.text.splitlines()[-1]
    elif name in ENDS:
        got = r.text.count(APIS[name].mark)
        last = r.text.rstrip("\n").rsplit("\n\n", 1)[-1]
        ok = got == TOKENS and last.startswith(ENDS[name])
    else:
        got = r.text.count('data: {"response":')
        ok = got == TOKENS and r.text.endswith("data: {}\n\n")
    if not ok:
        raise RuntimeError(f"llmserve {name}: {got} tokens:\n{r.text[:500]}")


def _check_non_stream(direct: str, proxied: str, auth: dict[str, str]) -> None:
    body = {"model": MODEL, "prompt": "hi", "stream": False}
    with httpx.Client(timeout=30) as c:
        d = c.post(direct + "/api/generate", json=body).json()
        p = c.post(
            proxied + "/api/v1/generate", json={"prompt": "hi", "stream": False}, headers=auth
        )
    p.raise_for_status()
    if d["response"] != " tok" * TOKENS or p.json().get("response") != " tok" * TOKENS:
        raise RuntimeError(f"non-stream answers differ: {d!r} / {p.text[:300]}")


#: How the last event of a good stream of the other faces starts.
ENDS = {
    "openai": "data: [DONE]",
    "messages": "event: message_stop",
    "responses": "event: response.completed",
}


def command(sc: Scenario, side: str, target: dict[str, Any]) -> dict[str, Any]:
    """The load generator's command for one side of a scenario."""
    api = APIS[sc.api]
    direct = side == "direct"
    body = api.direct_body if direct else api.body
    headers = target["limited_headers"] if sc.limited and not direct else target["headers"]
    return {
        "url": target["url"] + (api.direct_path if direct else api.path),
        "headers": headers,
        "stream": sc.stream,
        "body": {**body, "stream": sc.stream},
        "concurrency": sc.concurrency,
        "mark": api.direct_mark if direct else api.mark,
    }


def run_pass(
    gen: LoadGen,
    sides: dict[str, dict[str, dict]],
    results: dict[tuple[str, str], Tally],
    scenarios: list[Scenario],
    rounds: int,
    duration: float,
    slow_duration: float,
    warmup: float,
) -> None:
    for sc in scenarios:
        log.info("  %s", sc.name)
        for r in range(rounds):
            order = ("direct", "llmserve") if r % 2 == 0 else ("llmserve", "direct")
            for side in order:
                t = sides[sc.double][side]
                cmd = command(sc, side, t)
                if r == 0 and warmup > 0:
                    gen.run(**cmd, duration=warmup)
                before = cpu_seconds(t["pid"])
                res = gen.run(**cmd, duration=slow_duration if sc.slow else duration)
                after = cpu_seconds(t["pid"])
                if res["errors"]:
                    log.warning(
                        "    %s: %d errors, last %s", side, res["errors"], res.get("last_error")
                    )
                results[(sc.name, side)].add(res, after - before)


def fmt_ms(values: list[float], p: float) -> float | str:
    return percentile(values, p) if values else "-"


def report(results: dict[tuple[str, str], Tally], scenarios: list[Scenario]) -> None:
    rows = []
    for sc in scenarios:
        d, s = results[(sc.name, "direct")], results[(sc.name, "llmserve")]
        for side, t in (("direct", d), ("llmserve", s)):
            per_req = t.server_cpu / t.requests * 1e6 if t.requests else 0.0
            per_tok = per_req / TOKENS if sc.stream else "-"
            client = t.client_cpu / t.wall * 100 if t.wall else 0.0
            ratio = f"{t.rps / d.rps:.2f}" if side == "llmserve" and d.rps else ""
            added = ""
            if side == "llmserve" and sc.stream and d.ttft and t.ttft:
                added = f"{statistics.median(t.ttft) - statistics.median(d.ttft):+.2f}"
            rows.append(
                (
                    sc.name,
                    side,
                    t.requests,
                    t.errors,
                    t.rps,
                    ratio,
                    fmt_ms(t.latency, 50),
                    fmt_ms(t.latency, 99),
                    statistics.median(t.ttft) if t.ttft else "-",
                    added,
                    per_req,
                    per_tok,
                    client,
                )
            )
    print_table(
        (
            "scenario",
            "side",
            "requests",
            "errors",
            "req/s",
            "req/s ratio",
            "p50 ms",
            "p99 ms",
            "TTFT p50 ms",
            "added TTFT ms",
            "server CPU µs/req",
            "µs/token",
            "client CPU %",
        ),
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run with tiny counts (and the answers checked side by side)",
    )
    parser.add_argument("--rounds", type=int, help="segments per side per scenario (default 2)")
    parser.add_argument("--duration", type=float, help="seconds per segment (default 2.5)")
    parser.add_argument("--slow-duration", type=float, help="seconds per 20 ms segment (default 5)")
    parser.add_argument("--passes", type=int, help="identical passes (memory growth); default 2")
    parser.add_argument("--database-url", default="", help="use this database instead")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="where to create the throwaway DB")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=64,
        help="the servers' MAX_CONCURRENT_GENERATIONS (default 64)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the scenarios whose name contains this text (repeat for more)",
    )
    args = parser.parse_args()
    scenarios = [sc for sc in SCENARIOS if not args.only or any(o in sc.name for o in args.only)]
    if not scenarios:
        parser.error(f"no scenario name contains {args.only!r}")
    # Memory is read on the burst server, so it always runs; in DOUBLES' order.
    kinds = [k for k in DOUBLES if k == "burst" or any(sc.double == k for sc in scenarios)]
    rounds = args.rounds or (1 if args.quick else 2)
    duration = args.duration or (0.1 if args.quick else 2.5)
    slow_duration = args.slow_duration or (0.5 if args.quick else 5.0)
    warmup = 0.0 if args.quick else 0.5
    args.passes = args.passes or (1 if args.quick else 2)
    setup_logging()
    load_before = load_average()

    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(benchmark_database(args.database_url, args.admin_url))
        key = create_key(database_url)
        limited = create_limited_key(database_url)
        doubles = {
            k: stack.enter_context(double_process(DOUBLES[k][0], *DOUBLES[k][1])) for k in kinds
        }
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers: dict[str, ServerProcess] = {}
        for kind, (_, url) in doubles.items():
            env = bench_server_env(database_url, url, max_concurrent=args.max_concurrent)
            servers[kind] = stack.enter_context(running_server(env, tmp))
        checks = [
            functools.partial(
                check_answers,
                url,
                servers[kind].base_url,
                key,
                {"generate"} | {sc.api for sc in scenarios if sc.double == kind},
                at_once=args.quick,
            )
            for kind, (_, url) in doubles.items()
        ]
        with ThreadPoolExecutor(len(checks) if args.quick else 1) as pool:
            for done in [pool.submit(check) for check in checks]:
                done.result()
        gen = LoadGen()
        stack.callback(gen.close)
        auth = {"Authorization": f"Bearer {key}"}
        sides = {
            kind: {
                "direct": {"url": url, "headers": {}, "pid": proc.pid},
                "llmserve": {
                    "url": servers[kind].base_url,
                    "headers": auth,
                    "limited_headers": {"Authorization": f"Bearer {limited}"},
                    "pid": servers[kind].process.pid,
                },
            }
            for kind, (proc, url) in doubles.items()
        }
        pid = servers["burst"].process.pid
        rss = [rss_mb(pid)]
        results: dict[tuple[str, str], Tally] = {
            (sc.name, side): Tally() for sc in scenarios for side in ("direct", "llmserve")
        }
        started = time.monotonic()
        for n in range(args.passes):
            log.info("pass %d of %d", n + 1, args.passes)
            run_pass(gen, sides, results, scenarios, rounds, duration, slow_duration, warmup)
            time.sleep(0.5)  # let the request log flush
            rss.append(rss_mb(pid))
        load_after = load_average()
        elapsed = time.monotonic() - started
        for s in servers.values():
            s.stop()
        logged = count_request_logs(database_url)

    print(
        f"\nLoad, {args.passes} pass(es) x {rounds} segment(s) per side, {duration} s per segment "
        f"({slow_duration} s at 20 ms/token), {elapsed:.0f} s of load; load average before "
        f"{load_before}, after {load_after}; {os.cpu_count()} CPUs\n"
    )
    report(results, scenarios)
    print(
        f"\nllmserve RSS (zero-delay server): started {rss[0]:.1f} MB, "
        + ", ".join(f"after pass {i} {v:.1f} MB" for i, v in enumerate(rss[1:], 1))
    )
    total = sum(t.requests for (_, side), t in results.items() if side == "llmserve")
    print(f"request-log rows in the database: {logged} (llmserve requests timed: {total})")


if __name__ == "__main__":
    main()
