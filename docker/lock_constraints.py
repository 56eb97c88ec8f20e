"""Write pip's inputs for the API images from the project's own files, without Poetry.

``requirements.txt`` gets ``[project].dependencies`` from ``pyproject.toml`` (only the runtime
dependencies: no dev group), plus the optional dependencies of each ``--extra NAME`` (the ``cpu``
image asks for ``embedded``), and ``constraints.txt`` pins every package of ``poetry.lock`` to its
locked version, so the images run the versions the tests ran.

Usage: ``python lock_constraints.py [--extra NAME]... PROJECT_DIR OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path


def main(project: Path, output: Path, extras: list[str]) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    lock = tomllib.loads((project / "poetry.lock").read_text(encoding="utf-8"))
    requirements = list(pyproject["project"]["dependencies"])
    optional = pyproject["project"].get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra named {extra!r}")
        requirements += optional[extra]
    pins = sorted(f"{package['name']}=={package['version']}" for package in lock["package"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (output / "constraints.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="an extra to include")
    parser.add_argument("project", type=Path)
    parser.add_argument("output", type=Path)
    arguments = parser.parse_args()
    main(arguments.project, arguments.output, arguments.extra)
