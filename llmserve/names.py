"""Ollama model names: validation with Ollama's own rules, and the form used to compare them.

Full form ``[scheme://]host/namespace/model:tag``; missing parts default to
``registry.ollama.ai``, ``library`` and ``latest``, so ``llama3.2``,
``library/llama3.2:latest`` and ``registry.ollama.ai/library/llama3.2:latest`` are one model.
Comparison ignores case, as Ollama's does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmserve.errors import InvalidModelNameError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

#: Each part of a name: its longest length, its first character and the characters after it.
_RULES = {
    "host": (350, "[A-Za-z0-9_]", "[A-Za-z0-9_.:-]"),
    "namespace": (80, "[A-Za-z0-9_]", "[A-Za-z0-9_-]"),
    "model": (80, "[A-Za-z0-9_]", "[A-Za-z0-9_.-]"),
    "tag": (80, "[A-Za-z0-9_]", "[A-Za-z0-9_.-]"),
}
_PARTS = {
    part: (limit, re.compile(f"{first}{rest}*\\Z")) for part, (limit, first, rest) in _RULES.items()
}
#: The longest name :func:`parse` accepts.
MAX_LENGTH = 600


def _part(name: str) -> str:
    limit, first, rest = _RULES[name]
    return f"{first}{rest}{{0,{limit - 1}}}"


#: :func:`parse`'s rules as one regular expression (with :data:`MAX_LENGTH`), for the API's
#: schema: a name matches it exactly when ``parse`` accepts it (a test holds them together).
PATTERN = (
    f"^((https?://)?{_part('host')}/{_part('namespace')}/|{_part('namespace')}/)?"
    f"{_part('model')}(:{_part('tag')})?$"
)


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """The comparison key: every part present, lower case."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def display(self) -> str:
        """The shortest form, always with the tag (as ``/api/tags`` shows names)."""
        prefix = ""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"


def parse(name: str) -> ModelName:
    """Parse and validate ``name``; raise ``InvalidModelNameError`` (a 400) when it is not one."""
    if not isinstance(name, str) or not name or len(name) > MAX_LENGTH or not name.isascii():
        raise _invalid(name)
    rest = name
    scheme = next((s for s in ("https://", "http://") if rest.startswith(s)), "")
    rest = rest[len(scheme) :]
    tag = DEFAULT_TAG
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        _check("tag", tag, name)
    parts = rest.split("/")
    if len(parts) > 3 or (scheme and len(parts) < 3):  # a scheme comes with its host (Ollama)
        raise _invalid(name)
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    _check("model", model, name)
    _check("namespace", namespace, name)
    _check("host", host, name)
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


def key(name: str) -> str:
    """The comparison key of a valid name (``parse(name).key``)."""
    return parse(name).key


def same_model(a: str, b: str) -> bool:
    try:
        return parse(a).key == parse(b).key
    except InvalidModelNameError:
        return a.lower() == b.lower()


def _check(part: str, value: str, whole: str) -> None:
    limit, pattern = _PARTS[part]
    if not value or len(value) > limit or not pattern.match(value):
        raise _invalid(whole)


def _invalid(name: object) -> InvalidModelNameError:
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    return InvalidModelNameError(f"invalid model name {shown}: see Ollama's naming rules")
