"""Run Poetry against registries that serve PyPI's simple API but not its per-release JSON API.

Poetry asks PyPI for ``/pypi/<name>/<version>/json`` to resolve and to install. Some PyPI
mirrors and proxies (ours included) answer only ``/simple/<name>/`` and ``/pypi/<name>/json``.
When the per-release document is missing, this wrapper rebuilds it from the project document
(the release's files) and lets Poetry read the dependencies from the files' own metadata,
exactly as it does for any package whose JSON lacks them. Against a registry that serves the
per-release JSON it changes nothing.

Usage: ``python tools/poetry_compat.py <poetry arguments>`` (the interpreter that has Poetry).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urljoin

from poetry.console.application import main
from poetry.repositories.pypi_repository import PyPiRepository

_original_get = PyPiRepository._get


def _get(self: PyPiRepository, endpoint: str, headers: dict[str, str] | None = None) -> Any:
    data = _original_get(self, endpoint, headers)
    parts = endpoint.split("/")
    if data is not None or len(parts) != 4 or parts[0] != "pypi" or parts[3] != "json":
        return data
    name, version = parts[1], parts[2]
    project = _original_get(self, f"pypi/{name}/json")
    if project is None:
        return None
    files = project.get("releases", {}).get(version)
    if files is None:
        return None
    # The project document may give file URLs relative to itself.
    where = self._base_url + f"pypi/{name}/json"
    files = [{**f, "url": urljoin(where, f["url"])} for f in files]
    # The project document's "info" describes one release and may be stale, so the dependencies
    # are always read from the release's own files (Poetry does this when requires_dist is None).
    requires_python = next((f["requires_python"] for f in files if f.get("requires_python")), None)
    info = {
        "name": project["info"]["name"],
        "version": version,
        "summary": project["info"].get("summary"),
        "requires_dist": None,
        "requires_python": requires_python,
        "yanked": any(f.get("yanked") for f in files) and all(f.get("yanked") for f in files),
        "yanked_reason": None,
    }
    return {"info": info, "urls": files}


PyPiRepository._get = _get  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
