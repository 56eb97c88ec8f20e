"""Embedded engine: tokens/s and time to first token, llama.cpp direct versus through llmserve.

(a) direct: llama.cpp in this process, loaded with ``load_llama`` (as the embedded backend loads
    it: same ``n_ctx``, same ``n_threads``, AMX extra buffers off where they crash), the prompt
    formatted and tokenized as the backend does (checked against llmserve's ``PromptBuilder``
    once, untimed), then ``llama.reset()`` and ``llama.generate(...)`` with the backend's
    sampling arguments, detokenizing token by token until an end-of-generation token or
    ``--max-tokens``. That is the backend's own token loop minus threads, queues and HTTP.
(b) llmserve: a real ``llmserve serve`` process with ``LLM_BACKEND=embedded`` (SQLite in a temp
    directory), ``POST /api/v1/generate`` with ``stream: true``, read as SSE by httpx.

Both sides use temperature 0 and a fixed seed, so they generate the same text. A "token" is one
non-empty text fragment: one ``data: {"response": …}`` event on (b), one non-empty decoded
piece on (a). TTFT runs from the start of the request (a: from formatting the prompt) to the
first fragment; tokens/s is the decode rate after it, (fragments - 1) / (last - first).

The two sides never run at the same time (the machine may have only 2 CPUs): for each prompt
one side runs, then the other, alternating which goes first, with a short pause in between so
the server has finished its request-log write before the direct side starts.

    .venv/bin/python benchmarks/embedded.py                # 6 prompts x 3 rounds
    .venv/bin/python benchmarks/embedded.py --rounds 1 --max-tokens 32
"""

from __future__ import annotations

import argparse
import codecs
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import load_average, log, print_table, server_env, setup_logging
from llmserve.backends._embedded_engine import (
    DEFAULT_REPEAT_PENALTY,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    import_llama_cpp,
)
from llmserve.backends._embedded_prompt import GEMMA_MODEL, GEMMA_USER, PromptBuilder
from llmserve.backends.embedded import EmbeddedBackend, default_threads, load_llama
from llmserve.domain import GenerationRequest
from tests._server import ServerProcess, running_server

PROMPTS = (
    "Why is the sky blue?",
    "Explain how a refrigerator keeps food cold.",
    "Write a short poem about the sea.",
    "Give three tips for learning a new language.",
    "What is the difference between weather and climate?",
    "Summarise the story of Romeo and Juliet.",
)
N_CTX = 4096  # EmbeddedBackend's default
SEED = 42
SETTLE_S = 0.3  # between two runs: the other side has finished everything it does after a stream


@dataclass
class Run:
    side: str
    prompt: str
    ttft_ms: float
    fragments: int
    decode_s: float
    total_s: float
    text: str

    @property
    def tokens_per_s(self) -> float:
        return (self.fragments - 1) / self.decode_s if self.decode_s > 0 else float("nan")


class Direct:
    """llama.cpp in this process, driven the way the embedded backend drives it."""

    def __init__(self, path: Path, n_threads: int) -> None:
        self.llama_cpp = import_llama_cpp()
        self.llm = load_llama(path, n_ctx=N_CTX, n_threads=n_threads)
        vocab = self.llama_cpp.llama_model_get_vocab(self.llm.model)
        self.is_eog: Callable[[int], bool] = lambda t: bool(
            self.llama_cpp.llama_vocab_is_eog(vocab, t)
        )
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.formatter = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def text(token: int) -> str:
                return self.llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")

            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=text(self.llm.token_eos()),
                bos_token=text(self.llm.token_bos()),
            )
        self.template = "the GGUF's chat template" if template else "Gemma's turn format"

    def prompt_tokens(self, prompt: str) -> list[int]:
        tokenize = self.llm.tokenize
        if self.formatter is not None:
            rendered = self.formatter(messages=[{"role": "user", "content": prompt}]).prompt
            return tokenize(rendered.encode(), add_bos=False, special=True)
        return (
            tokenize(GEMMA_USER.encode(), add_bos=True, special=True)
            + tokenize(prompt.encode(), add_bos=False, special=False)
            + tokenize(GEMMA_MODEL.encode(), add_bos=False, special=True)
        )

    def check_prompt(self, prompt: str) -> None:
        """The tokens fed to llama.cpp must be exactly llmserve's, or the comparison is void."""
        ours = PromptBuilder(self.llm, self.llm.metadata.get("tokenizer.chat_template"))
        expected = ours.tokens(GenerationRequest.from_prompt(prompt))
        if self.prompt_tokens(prompt) != expected:
            raise RuntimeError(f"direct prompt tokens differ from llmserve's for {prompt!r}")

    def run(self, prompt: str, max_tokens: int) -> Run:
        llm = self.llm
        started = time.perf_counter()
        tokens = self.prompt_tokens(prompt)
        llm.reset()  # the backend starts every generation from an empty cache too
        llm.set_seed(SEED)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pieces: list[str] = []
        first = last = started
        produced = 0
        generator = llm.generate(
            tokens,
            temp=0.0,
            top_p=DEFAULT_TOP_P,
            top_k=DEFAULT_TOP_K,
            min_p=0.0,
            repeat_penalty=DEFAULT_REPEAT_PENALTY,
        )
        try:
            for token in generator:
                if self.is_eog(token):
                    break
                produced += 1
                text = decoder.decode(llm.detokenize([token]))
                if text:
                    last = time.perf_counter()
                    if not pieces:
                        first = last
                    pieces.append(text)
                if produced >= max_tokens:
                    break
        finally:
            generator.close()
        if tail := decoder.decode(b"", final=True):
            last = time.perf_counter()
            pieces.append(tail)
        return _run("direct", prompt, started, first, last, pieces)


def through_llmserve(
    client: httpx.Client, server: ServerProcess, prompt: str, max_tokens: int
) -> Run:
    body = {
        "prompt": prompt,
        "stream": True,
        "options": {"max_tokens": max_tokens, "temperature": 0, "seed": SEED},
    }
    pieces: list[str] = []
    started = time.perf_counter()
    first = last = started
    ended = False
    with client.stream("POST", server.base_url + "/api/v1/generate", json=body) as response:
        response.raise_for_status()
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "error":
                    raise RuntimeError(f"llmserve stream failed: {data}")
                if "response" not in data:
                    ended = True
                    continue
                last = time.perf_counter()
                if not pieces:
                    first = last
                pieces.append(data["response"])
    if not ended:
        raise RuntimeError("llmserve's stream ended without data: {}")
    return _run("llmserve", prompt, started, first, last, pieces)


def _run(
    side: str, prompt: str, started: float, first: float, last: float, pieces: list[str]
) -> Run:
    if not pieces:
        raise RuntimeError(f"{side}: no text generated for {prompt!r}")
    return Run(
        side=side,
        prompt=prompt,
        ttft_ms=(first - started) * 1000,
        fragments=len(pieces),
        decode_s=last - first,
        total_s=last - started,
        text="".join(pieces),
    )


def measure(args: argparse.Namespace, model: Path, n_threads: int) -> tuple[list[Run], str]:
    direct = Direct(model, n_threads)
    for prompt in PROMPTS:
        direct.check_prompt(prompt)
    log.info(
        "direct: %s loaded, n_threads=%d, n_ctx=%d, %s",
        model.name,
        n_threads,
        N_CTX,
        direct.template,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = server_env(
            LLM_BACKEND="embedded",
            DATABASE_URL=f"sqlite:///{tmp}/llmserve.db",
            EMBEDDED_MODEL_PATH=str(model),
        )
        with running_server(env, Path(tmp)) as server, httpx.Client(timeout=300) as client:
            sides: dict[str, Callable[[str], Run]] = {
                "direct": lambda p: direct.run(p, args.max_tokens),
                "llmserve": lambda p: through_llmserve(client, server, p, args.max_tokens),
            }
            for _ in range(args.warmup):  # loads the server's model, warms caches on both
                for side in sides.values():
                    side(PROMPTS[0])
                    time.sleep(SETTLE_S)
            for round_no in range(args.rounds):
                for i, prompt in enumerate(PROMPTS[: args.prompts]):
                    order = ("direct", "llmserve")
                    if (round_no + i) % 2:
                        order = ("llmserve", "direct")
                    for side in order:
                        run = sides[side](prompt)
                        runs.append(run)
                        log.info(
                            "round %d %-8s %5.1f tok/s  TTFT %6.1f ms  %2d tokens  %s",
                            *(round_no + 1, side, run.tokens_per_s, run.ttft_ms),
                            *(run.fragments, prompt),
                        )
                        time.sleep(SETTLE_S)
            load = load_average()
    return runs, load


def report(runs: list[Run], args: argparse.Namespace, n_threads: int, load: str) -> None:
    by_side = {side: [r for r in runs if r.side == side] for side in ("direct", "llmserve")}
    print(
        f"\nEmbedded engine, {args.prompts} prompts x {args.rounds} rounds, max_tokens "
        f"{args.max_tokens}, temperature 0, n_threads {n_threads}, n_ctx {N_CTX}, load {load}"
    )
    rows: list[tuple[Any, ...]] = []
    medians: dict[str, tuple[float, float]] = {}
    for side, label in (("direct", "(a) llama.cpp direct"), ("llmserve", "(b) through llmserve")):
        side_runs = by_side[side]
        rate = statistics.median(r.tokens_per_s for r in side_runs)
        overall = sum(r.fragments for r in side_runs) / sum(r.total_s for r in side_runs)
        ttft = statistics.median(r.ttft_ms for r in side_runs)
        medians[side] = (rate, overall)
        tokens = statistics.mean(r.fragments for r in side_runs)
        rows.append((label, len(side_runs), f"{tokens:.1f}", rate, overall, ttft))
    print_table(
        ("side", "runs", "tokens/run", "tokens/s (median)", "tokens/s incl. TTFT", "TTFT ms"),
        rows,
    )
    decode_ratio = medians["llmserve"][0] / medians["direct"][0]
    overall_ratio = medians["llmserve"][1] / medians["direct"][1]
    print(f"\nratio (b)/(a), tokens/s: {decode_ratio:.3f}   (incl. TTFT: {overall_ratio:.3f})")
    pairs = list(zip(by_side["direct"], by_side["llmserve"], strict=True))
    paired = statistics.median(b.tokens_per_s / a.tokens_per_s for a, b in pairs)
    print(f"median of per-prompt ratios (each pair ran back to back): {paired:.3f}")
    same = sum(a.text == b.text for a, b in pairs)
    print(f"identical text on both sides: {same} of {len(pairs)} prompt runs")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompt set")
    parser.add_argument(
        "--prompts",
        type=int,
        default=len(PROMPTS),
        choices=range(1, len(PROMPTS) + 1),
        metavar=f"1..{len(PROMPTS)}",
        help="how many of the built-in prompts to use",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side first")
    parser.add_argument(
        "--model", type=Path, default=None, help="a GGUF file (default: the built-in model)"
    )
    args = parser.parse_args()
    setup_logging()
    model = args.model.resolve() if args.model else EmbeddedBackend().built_in_path
    n_threads = default_threads()  # what the server's embedded backend uses on this machine
    runs, load = measure(args, model, n_threads)
    report(runs, args, n_threads, load)


if __name__ == "__main__":
    main()
