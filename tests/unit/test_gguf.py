"""The GGUF header reader behind the embedded engine's ``/api/show``, on files written here."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from llmserve import errors
from llmserve.backends._gguf import human_number, read_metadata


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(kind: int, value: Any) -> bytes:
    formats = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 12: "<d"}
    if kind == 8:
        return _string(value)
    if kind == 9:
        item_kind, items = value
        head = struct.pack("<IQ", item_kind, len(items))
        return head + b"".join(_value(item_kind, item) for item in items)
    return struct.pack(formats[kind], value)


def write_gguf(path: Path, kv: list[tuple[str, int, Any]], shapes: list[list[int]]) -> Path:
    """A GGUF v3 header: ``kv`` as (key, type code, value), one tensor record per shape."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(kv))
    for key, kind, value in kv:
        out += _string(key) + struct.pack("<I", kind) + _value(kind, value)
    for index, shape in enumerate(shapes):
        out += _string(f"t{index}") + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", dim) for dim in shape) + struct.pack("<IQ", 0, 0)
    path.write_bytes(out + b"\0" * 64)  # where the weights would start
    return path


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    kv = [
        ("general.architecture", 8, "llama"),
        ("general.name", 8, "Tiny"),
        ("general.file_type", 4, 15),
        ("llama.context_length", 4, 2048),
        ("llama.rope.freq_scale", 6, 0.1),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        ("llama.use_parallel_residual", 7, True),
        ("general.big", 10, 2**40),
        ("general.ratio", 12, 0.25),
        ("general.offset", 5, -3),
        ("general.tags", 9, (8, ["a", "b"])),
        ("tokenizer.ggml.tokens", 9, (8, [f"tok{i}" for i in range(9)])),
        ("tokenizer.ggml.scores", 9, (6, [0.5] * 7)),
        ("tokenizer.chat_template", 8, "{{ messages }}"),
    ]
    return write_gguf(tmp_path / "tiny.gguf", kv, [[4, 8], [3_000_000_000], [2, 3, 5]])


def test_keys_values_and_the_parameter_count(gguf: Path) -> None:
    metadata = read_metadata(gguf)
    assert metadata.parameter_count == 32 + 3_000_000_000 + 30
    kv = metadata.kv
    assert kv["general.parameter_count"] == metadata.parameter_count
    assert (kv["general.architecture"], kv["llama.context_length"]) == ("llama", 2048)
    assert (kv["general.big"], kv["general.ratio"], kv["general.offset"]) == (2**40, 0.25, -3)
    assert kv["llama.use_parallel_residual"] is True
    # float32 values as Go writes them: the shortest decimal of the same float32
    assert (kv["llama.rope.freq_scale"], kv["llama.attention.layer_norm_rms_epsilon"]) == (
        0.1,
        1e-5,
    )
    assert kv["tokenizer.chat_template"] == "{{ messages }}"


def test_long_arrays_are_empty_unless_verbose(gguf: Path) -> None:
    short = read_metadata(gguf).kv
    assert short["general.tags"] == ["a", "b"]
    assert short["tokenizer.ggml.tokens"] == [] and short["tokenizer.ggml.scores"] == []
    whole = read_metadata(gguf, verbose=True).kv
    assert whole["tokenizer.ggml.tokens"] == [f"tok{i}" for i in range(9)]
    assert whole["tokenizer.ggml.scores"] == [0.5] * 7


def test_details_in_ollamas_terms(gguf: Path) -> None:
    assert read_metadata(gguf).details() == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.0B",
        "quantization_level": "Q4_K_M",
    }


def test_a_changed_file_is_read_again(gguf: Path) -> None:
    assert read_metadata(gguf).architecture == "llama"
    write_gguf(gguf, [("general.architecture", 8, "gemma3")], [[7]])
    assert read_metadata(gguf).architecture == "gemma3"
    assert read_metadata(gguf).details()["quantization_level"] == ""


@pytest.mark.parametrize(
    "content", [b"", b"GGML" + b"\0" * 40, b"GGUF" + struct.pack("<IQQ", 9, 0, 0), b"GGUF\3"]
)
def test_what_is_not_gguf_is_a_backend_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(errors.BackendError, match=r"cannot read the GGUF header of bad\.gguf"):
        read_metadata(path)


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (268_098_176, "268.10M"),
        (3_212_749_888, "3.2B"),
        (8_000_000_000, "8B"),
        (7_000_000, "7M"),
        (12_345, "12K"),
        (999, "999"),
    ],
)
def test_human_number_is_ollamas(count: int, shown: str) -> None:
    assert human_number(count) == shown
