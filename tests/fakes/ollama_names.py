"""Ollama's model-name rules, private to the test double.

Deliberately not shared with production code: the double is an independent oracle, so a bug in
llmserve's own name handling cannot hide behind the same bug here.

A name is ``[scheme://]host/namespace/model:tag``. Missing parts default to
``registry.ollama.ai``, ``library`` and ``latest``; the display form is the shortest one and always
carries the tag (``llama3.2:latest``, ``myns/m:latest``, ``example.com:5000/ns/m:v1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG = _MODEL


@dataclass(frozen=True)
class ModelName:
    """A parsed, valid model name; the parts keep the spelling they were given."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The shortest form, as ``/api/tags`` shows it (always with the tag)."""
        if self.host == DEFAULT_HOST:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """The identity used for matching: the full name, case-folded."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()


def parse_model_name(raw: str) -> ModelName | None:
    """Parse ``raw`` like Ollama does; ``None`` when it is not a valid name.

    The tag is what follows the last ``:`` if that comes after the last ``/``. The rest is split
    from the right on ``/`` into model, namespace and host. A part that a separator promised but
    that is empty (``m:``, ``/m``, ``a//b``) makes the name invalid.
    """
    if not raw or not raw.isascii():
        return None
    rest, tag = raw, DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
        if not tag:
            return None
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    scheme, sep, after = rest.partition("://")
    if sep:
        if scheme not in ("http", "https"):
            return None
        rest = after
    parts = rest.split("/")
    if len(parts) > 3 or any(not part for part in parts):
        return None
    model = parts[-1]
    if len(parts) >= 2:
        namespace = parts[-2]
    if len(parts) == 3:
        host = parts[0]
    elif sep:
        return None  # a scheme promises a host
    checks = ((_HOST, host), (_NAMESPACE, namespace), (_MODEL, model), (_TAG, tag))
    if not all(pattern.fullmatch(value) for pattern, value in checks):
        return None
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)
