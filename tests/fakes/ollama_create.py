"""``/api/create`` for the double: a new model from an installed (or pullable) one, as Ollama
makes it.

Refused with 400 before anything is sent (``{"error"}``, ``application/json; charset=utf-8``):
a body Go cannot decode, a ``files``/``adapters`` path that is not relative (``file path must
be relative``) or has no digest (``invalid digest format``), an invalid name (``invalid model
name``, also for a missing one). Then the progress (NDJSON; with ``stream: false`` the last
object alone). A failure that comes first keeps its status (Ollama sends it as a plain
``application/json`` answer); a later one is a last line ``{"error"}`` on the 200 stream:

* ``from`` invalid: 400 ``invalid model name``; installed: used as it is; in the registry: the
  pull's own lines (``pulling manifest`` … ``success``) come first and install it; neither:
  ``pulling manifest``, then ``pull model manifest: file does not exist``;
* ``files``: the double keeps no blobs (it has no ``/api/blobs``), so a ``.gguf`` fails after
  ``parsing GGUF`` with the missing blob's error, and a name Ollama cannot type is 400
  ``unknown type``;
* neither ``from`` nor ``files``: 400 ``neither 'from' or 'files' was specified``;
* ``quantize`` on a base that is not F16, BF16 or F32: 500 ``quantization is only supported for
  F16, BF16 and F32 models``; on one that is, ``quantizing … model to …`` lines;
* one ``using existing layer sha256:…`` per layer of the base, one ``creating new layer
  sha256:…`` per new ``template``, ``system``, ``license``, ``parameters``, ``messages`` layer
  (``using existing layer`` when the same content was written before), ``writing manifest``
  (the model is installed now, replacing one of that name, with the base's details and
  capabilities and its own system prompt and template), ``success``.

Lines are paced by ``pull_delay_s``; a client that leaves is recorded as a cancellation and
nothing more is installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

from tests.fakes.ollama_admin import PULL_NOT_FOUND, pull_steps
from tests.fakes.ollama_decode import (
    FieldCheck,
    RequestError,
    anything,
    boolean,
    decode_body,
    obj,
    string,
    struct_list,
    type_error,
)
from tests.fakes.ollama_names import parse_model_name
from tests.fakes.ollama_records import CreateRecord, ModelEntry
from tests.fakes.ollama_state import DoubleState
from tests.fakes.ollama_wire import Exchange, go_json

BLOBS = "/root/.ollama/models/blobs"
UNQUANTIZED = ("F16", "BF16", "F32")
_PLAIN_JSON = "application/json"  # streamResponse / waitForStream set it before c.JSON


def _string_map(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise type_error(value, where, "map[string]string")
    for item in value.values():
        if not isinstance(item, str):
            raise type_error(item, where, "string")


CREATE_FIELDS: dict[str, FieldCheck] = {
    "model": string,
    "name": string,
    "from": string,
    "stream": boolean,
    "quantize": string,
    "quantization": string,
    "files": _string_map,
    "adapters": _string_map,
    "template": string,
    "system": string,
    "license": anything,
    "parameters": obj,
    "messages": struct_list({"role": string, "content": string}, "[]api.Message", "Message"),
}

Step = tuple[dict[str, Any], Callable[[], None] | None]
Failure = tuple[int, str]


async def handle_create(state: DoubleState, ex: Exchange) -> None:
    req = decode_body(ex.body, CREATE_FIELDS, "CreateRequest")
    for key in ("files", "adapters"):
        for path, digest in (req.get(key) or {}).items():
            if key == "files" and not _valid_path(path):
                raise RequestError(400, "file path must be relative")
            if not digest:
                raise RequestError(400, "invalid digest format")
    name = req.get("model") or req.get("name") or ""
    if parse_model_name(name) is None:
        raise RequestError(400, "invalid model name")
    record = CreateRecord(model=name, stream=req.get("stream", True), request=req)
    state.begin_create(record)
    steps, failure = _plan(state, name, req)
    for index, (step, action) in enumerate(steps):
        if index and not await ex.pause(state.pull_delay_s):
            await _interrupted(state, ex, record)
            return
        if action is not None:
            action()
        record.statuses.append(step["status"])
        if record.stream and not await ex.write(go_json(step) + b"\n"):
            await _interrupted(state, ex, record)
            return
    if failure is not None:
        status, message = failure
        record.error = message
        if ex.started:
            await ex.finish(go_json({"error": message}) + b"\n")
        else:
            await ex.respond(status, go_json({"error": message}), _PLAIN_JSON)
        return
    record.finished = True
    if record.stream:
        await ex.finish()
    else:
        await ex.respond(200, go_json(steps[-1][0]), _PLAIN_JSON)


def _valid_path(path: str) -> bool:
    """Go's ``fs.ValidPath``: relative, slash-separated, no ``.``/``..``/empty elements."""
    if path == ".":
        return True
    return bool(path) and all(part not in ("", ".", "..") for part in path.split("/"))


def _plan(state: DoubleState, name: str, req: dict[str, Any]) -> tuple[list[Step], Failure | None]:
    """The progress objects of this create (each with what happens when it goes out), and the
    failure that ends it, if any."""
    steps: list[Step] = []
    if req.get("from"):
        base_name = req["from"]
        if parse_model_name(base_name) is None:
            return steps, (400, "invalid model name")
        base = state.find_model(base_name)
        if base is None:
            source = state.pullable(base_name)
            for step in pull_steps(source):
                install = step["status"] == "writing manifest" and source is not None
                steps.append((step, _installing(state, base_name, source) if install else None))
            if source is None:
                return steps, (500, PULL_NOT_FOUND)
            steps.append(({"status": "success"}, None))
            base = source
    elif "files" in req:
        return _from_files(req["files"])
    else:
        return steps, (400, "neither 'from' or 'files' was specified")
    entry = copy.copy(base)
    failure = _quantize(entry, req.get("quantize") or req.get("quantization"), steps)
    if failure is not None:
        return steps, failure
    layers = [digest for digest, _ in base.layers()]
    if "parameters" in req:
        layers.pop()  # Ollama merges the parameters into a new params layer
    steps += [({"status": f"using existing layer sha256:{digest}"}, None) for digest in layers]
    for content in _new_layers(req):
        digest = hashlib.sha256(content.encode()).hexdigest()
        known = state.add_blob(digest)
        status = "using existing layer" if known else "creating new layer"
        steps.append(({"status": f"{status} sha256:{digest}"}, None))
        layers.append(digest)
    entry.system = req.get("system", base.system)
    entry.template = req.get("template", base.template)
    entry.digest = hashlib.sha256(":".join([name, *layers]).encode()).hexdigest()
    steps.append(({"status": "writing manifest"}, lambda: state.install_created(name, entry)))
    steps.append(({"status": "success"}, None))
    return steps, None


def _installing(state: DoubleState, name: str, source: ModelEntry | None) -> Callable[[], None]:
    assert source is not None
    return lambda: state.install(name, source)


def _from_files(files: dict[str, str]) -> tuple[list[Step], Failure | None]:
    for path in sorted(files):
        digest = files[path].replace(":", "-", 1)
        if not digest.startswith("sha256-") or len(digest) != 71:
            return [], (500, "invalid digest format")
        missing = f"open {BLOBS}/{digest}: no such file or directory"
        if path.endswith(".gguf"):
            return [({"status": "parsing GGUF"}, None)], (500, missing)
        if path.endswith(".safetensors"):
            return [({"status": "converting model"}, None)], (500, missing)
    return [], (400, "unknown type")


def _quantize(entry: ModelEntry, quantize: str | None, steps: list[Step]) -> Failure | None:
    if not quantize:
        return None
    if entry.quantization_level not in UNQUANTIZED:
        return (500, "quantization is only supported for F16, BF16 and F32 models")
    want = quantize.upper()
    status = f"quantizing {entry.quantization_level} model to {want}"
    for completed in (0, entry.size // 2, entry.size):
        step: dict[str, Any] = {"status": status, "digest": "0000000000000000000"}
        step["total"] = entry.size
        if completed:
            step["completed"] = completed
        steps.append((step, None))
    steps.append(({"status": "verifying conversion"}, None))
    entry.quantization_level = want
    return None


def _new_layers(req: dict[str, Any]) -> list[str]:
    """The contents of the layers the request adds, in Ollama's order."""
    contents = [req[key] for key in ("template", "system") if req.get(key)]
    licenses = req.get("license")
    contents += [licenses] if isinstance(licenses, str) else list(licenses or [])
    if "parameters" in req:
        contents.append(json.dumps(req["parameters"], sort_keys=True) + "\n")
    if req.get("messages"):
        contents.append(json.dumps(req["messages"]))
    return [content for content in contents if content]


async def _interrupted(state: DoubleState, ex: Exchange, record: CreateRecord) -> None:
    if ex.gone:
        state.mark_cancelled(record)
    else:
        record.aborted = True
        await ex.abort()
