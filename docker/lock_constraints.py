"""Write pip's inputs for the API image from the project's own files, without Poetry.

``requirements.txt`` gets ``[project].dependencies`` from ``pyproject.toml`` (only the runtime
dependencies: no dev group, no extras), and ``constraints.txt`` pins every package of
``poetry.lock`` to its locked version, so the image runs the versions the tests ran.

Usage: ``python lock_constraints.py PROJECT_DIR OUTPUT_DIR``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def main(project: Path, output: Path) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    lock = tomllib.loads((project / "poetry.lock").read_text(encoding="utf-8"))
    requirements = pyproject["project"]["dependencies"]
    pins = sorted(f"{package['name']}=={package['version']}" for package in lock["package"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (output / "constraints.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
