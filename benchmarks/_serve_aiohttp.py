"""``llmserve`` with the generation pool swapped for aiohttp: ``ab_client.py``'s other side.

    .venv/bin/python benchmarks/_serve_aiohttp.py serve --port 8001

The same command line as ``python -m llmserve``. Before anything of llmserve's runs, it replaces
``llmserve.backends._http1.Http1Pool`` with :class:`benchmarks._aiohttp_pool.AiohttpPool`, which
the Ollama backend then builds instead (it looks the class up through the module when it is
created). Benchmark code only: production never imports this. ``serve`` runs uvicorn in this
process (one worker), so the replacement holds in the process that answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._aiohttp_pool import AiohttpPool
from llmserve.backends import _http1


def main() -> None:
    _http1.Http1Pool = AiohttpPool  # type: ignore[misc, assignment]
    from llmserve.cli import main as llmserve_main

    sys.argv = ["llmserve", *sys.argv[1:]]
    llmserve_main()


if __name__ == "__main__":
    main()
