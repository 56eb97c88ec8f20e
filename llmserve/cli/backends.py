"""``llmserve backends``: the backend servers, their health, models and counters.

Without ``--server`` every configured server (``OLLAMA_BASE_URL`` / ``OPENAI_BASE_URL``) is
asked now, cheaply (version, models, loaded models), by this command itself. With ``--server``
it shows a running llmserve's view (``GET /api/v1/backends``, an admin key when auth is on),
in-flight generations, errors and failovers included.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.table import Table

from llmserve.cli._client import api_key_option, server_option, server_url
from llmserve.cli._run import backend_settings_or_exit, run, stdout_console


def backends(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per server."),
    server: str = server_option(),
    api_key: str = api_key_option(),
) -> None:
    """Show the backend servers: health, version, models, loaded models (and, with --server,
    in-flight generations, errors and failovers)."""
    rows = run(_remote(server_url(server), api_key) if server else _local())
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    remote = bool(server)
    columns = ["server", "health", "version", "models", "loaded"]
    if remote:
        columns += ["in flight", "generations", "errors", "failovers"]
    table = Table(*columns)
    for row in rows:
        cells = [
            str(row["url"]),
            str(row["status"]),
            str(row.get("version") or ""),
            ", ".join(row.get("models") or []),
            ", ".join(row.get("loaded") or []),
        ]
        if remote:
            cells += [str(row.get(key, "")) for key in ("in_flight", "generations", "errors")]
            cells.append(str(row.get("failovers", "")))
        table.add_row(*cells)
    stdout_console().print(table)


async def _local() -> list[dict[str, Any]]:
    from llmserve.backends.factory import create_backend, http_client
    from llmserve.backends.pool import describe_servers

    settings = backend_settings_or_exit()
    client = http_client(settings)
    backend = create_backend(settings, client)
    try:
        timeout = settings.BACKEND_CONNECT_TIMEOUT_S + 5.0
        return await describe_servers(backend, settings.backend_urls, timeout, fresh=True)
    finally:
        await backend.aclose()
        await client.aclose()


async def _remote(base_url: str, api_key: str | None) -> list[dict[str, Any]]:
    from llmserve.cli._remote import Remote

    async with Remote(base_url, api_key or None) as remote:
        return await remote.backends()
