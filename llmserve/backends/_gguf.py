"""A GGUF file's metadata, read without llama.cpp: its key-value header and parameter count.

What the embedded backend says of a model in Ollama's terms (``/api/show``'s ``model_info`` and
``details``) comes from here. A GGUF file starts with ``GGUF``, a version (2 or 3), the tensor
and key counts, the keys (name, type, value), then one record per tensor (name, shape, type,
offset); the weights follow and are never read. The file is memory-mapped, so only the header's
pages are touched. Results are cached per file and modification, since a vocabulary array can
hold 262 144 strings (~0.1 s to walk).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmserve import errors

#: Value types by their GGUF code: (struct format, size) for the fixed-size ones.
_FIXED = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_FLOAT32, _STRING, _ARRAY = 6, 8, 9

#: llama.cpp's ``llama_ftype`` names (``general.file_type``), as Ollama prints them.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


@dataclass(frozen=True, slots=True)
class GgufMetadata:
    """The header's keys and values (arrays longer than the reader's limit as ``[]``, as
    Ollama's ``/api/show`` gives them unless ``verbose``), plus the parameter count."""

    kv: dict[str, Any]
    parameter_count: int

    @property
    def architecture(self) -> str:
        return str(self.kv.get("general.architecture") or "")

    def details(self) -> dict[str, object]:
        """Ollama's ``details`` for this file: format, family, size and quantization."""
        file_type = self.kv.get("general.file_type")
        family = self.architecture
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": human_number(self.parameter_count),
            "quantization_level": (
                FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else ""
            ),
        }


def human_number(count: int) -> str:
    """A parameter count as Ollama prints it: ``268.10M``, ``3.2B``, ``8B``, ``12K``."""
    for scale, unit, decimals in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if count >= scale:
            number = count / scale
            if unit == "K" or number == math.floor(number):
                return f"{number:.0f}{unit}"
            return f"{number:.{decimals}f}{unit}"
    return str(count)


def read_metadata(path: Path, *, verbose: bool = False) -> GgufMetadata:
    """``path``'s metadata (blocking; cached while the file is unchanged). ``verbose``: keep
    every array whole. A file that is not GGUF is a ``BackendError``."""
    stat = path.stat()
    return _read_cached(path, stat.st_size, stat.st_mtime_ns, verbose)


@lru_cache(maxsize=16)
def _read_cached(path: Path, _size: int, _mtime_ns: int, verbose: bool) -> GgufMetadata:
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _Reader(m, None if verbose else 5).metadata()
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
        raise errors.BackendError(f"cannot read the GGUF header of {path.name}: {exc}") from None


class _Reader:
    def __init__(self, data: mmap.mmap, max_array: int | None) -> None:
        self._data = data
        self._at = 0
        self._max_array = max_array

    def metadata(self) -> GgufMetadata:
        if self._data[:4] != b"GGUF":
            raise ValueError("bad magic bytes")
        self._at = 4
        version = self._fixed(4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        tensors, keys = self._fixed(10), self._fixed(10)
        kv: dict[str, Any] = {}
        for _ in range(keys):
            key = self._string()
            kv[key] = self._value(self._fixed(4))
        parameters = 0
        for _ in range(tensors):
            self._string()  # the tensor's name
            dims = self._fixed(4)
            shape = [self._fixed(10) for _ in range(dims)]
            self._at += 4 + 8  # its type and offset
            parameters += math.prod(shape)
        kv["general.parameter_count"] = parameters
        return GgufMetadata(kv, parameters)

    def _fixed(self, kind: int) -> Any:
        fmt, size = _FIXED[kind]
        (value,) = struct.unpack_from(fmt, self._data, self._at)
        self._at += size
        return value

    def _string(self) -> str:
        length = self._fixed(10)
        start = self._at
        self._at += length
        if self._at > len(self._data):
            raise ValueError("a string runs past the end of the file")
        return self._data[start : self._at].decode("utf-8")

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            return self._array()
        if kind not in _FIXED:
            raise ValueError(f"unknown value type {kind}")
        value = self._fixed(kind)
        return _shortest_float32(value) if kind == _FLOAT32 else value

    def _array(self) -> list[Any]:
        kind, count = self._fixed(4), self._fixed(10)
        keep = self._max_array is None or count <= self._max_array
        if kind in _FIXED and not keep:
            self._at += _FIXED[kind][1] * count
            return []
        if kind == _STRING and not keep:
            for _ in range(count):  # the lengths must be read to find the end
                (length,) = struct.unpack_from("<Q", self._data, self._at)
                self._at += 8 + length
            return []
        values = [self._value(kind) for _ in range(count)]
        return values if keep else []


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is the same 32-bit float (``1e-06``, not ``9.99999997e-07``),
    as Go writes a float32 in JSON."""
    bits = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == bits:
            return candidate
    return value
