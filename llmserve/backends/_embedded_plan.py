"""What the embedded engine makes of a request, decided on the event loop before any work.

Each part of a :class:`~llmserve.domain.GenerationRequest` either has a native form here or is
refused with ``UnsupportedError`` (naming the capability and the model) before the job is
submitted, so the HTTP layer answers 400 before the first byte:

* messages (system, user, assistant, tool calls, tool results): the model's chat template
  (``_embedded_prompt``);
* ``response_format`` ``json``: llama.cpp's JSON grammar (an object at the top level);
  ``json_schema``: a grammar made from the schema by llama-cpp-python's converter;
* ``tool_choice`` ``required`` or a named function: the grammar of the call's schema
  (``_tools.forced_schema``), the conversation of ``forced_messages``, and the stream wrapped
  in ``ForcedToolStream``; ``none``: the tools are ignored;
* ``tools`` with ``tool_choice`` ``auto``: **refused**, the engine cannot leave it to the model
  whether to call (only forced calls);
* images: **refused**, the engine runs text models;
* ``num_ctx``: the window that prompt and answer share; **refused** when larger than the
  engine's context (``n_ctx``);
* ``keep_alive``: **refused**, an Ollama option (here one model stays loaded until another is
  asked for);
* sampling options, ``seed``, ``stop``, the penalties, ``max_tokens``: llama.cpp's sampler
  chain and the token loop, with Ollama's defaults where unset.

Compiling a grammar is cheap (measured: 0.08 ms to convert a small schema, 0.05 ms for
llama.cpp to parse it), so nothing is cached; sampling under one is where the time goes
(``_embedded_grammar``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from llmserve import errors
from llmserve.backends._ollama_only import refuse_ollama_only
from llmserve.backends._tools import forced_messages, forced_schema
from llmserve.domain import GenerationRequest

# llama-cpp-python's schema converter lets a string hold raw control characters, which JSON
# forbids (a raw newline in a string would make the answer unparseable); llama.cpp's own
# converter and its JSON grammar exclude them, and so does this.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


@dataclass(frozen=True, slots=True)
class Plan:
    """A request as the worker runs it."""

    #: The request whose messages are rendered (``forced_messages`` for a forced call).
    request: GenerationRequest
    #: The GBNF grammar the answer must follow, if any.
    grammar: str | None
    #: The answer is a forced tool call (the stream is wrapped in ``ForcedToolStream``).
    forced: bool
    #: Tokens the prompt and the answer may fill together.
    window: int


def plan(model: str, request: GenerationRequest, n_ctx: int) -> Plan:
    """The native form of ``request``, or ``UnsupportedError`` for what the engine cannot do."""
    options = request.options
    refuse_ollama_only(request, model, "embedded")
    if any(message.images for message in request.messages):
        raise _unsupported(model, "images", "it runs text models only")
    if options.keep_alive is not None:
        raise _unsupported(
            model,
            "keep_alive",
            "an Ollama option; the engine keeps one model loaded until another is asked for",
        )
    if options.num_ctx is not None and options.num_ctx > n_ctx:
        raise _unsupported(
            model, f"num_ctx {options.num_ctx}", f"the engine's context holds {n_ctx} tokens"
        )
    choice = request.tool_choice
    if request.tools and choice.mode == "auto":
        raise _unsupported(
            model,
            "tools with tool_choice 'auto'",
            "it can only force a call: use tool_choice 'required' or name a function",
        )
    window = min(options.num_ctx or n_ctx, n_ctx)
    forced = forced_schema(request)
    if forced is not None:
        tool_grammar = schema_grammar(model, forced)
        request = replace(request, messages=forced_messages(request))
        return Plan(request, tool_grammar, True, window)
    response_format = request.response_format
    grammar = None
    if response_format is not None and response_format.kind != "text":
        schema = response_format.schema
        grammar = json_grammar() if schema is None else schema_grammar(model, schema)
    return Plan(request, grammar, False, window)


def json_grammar() -> str:
    """Any JSON object (llama.cpp's ``json.gbnf``)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


#: JSON Schema keywords that llama-cpp-python's converter leaves out of the grammar: a schema
#: that uses one is refused rather than answered with JSON that may not validate.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
        "unevaluatedItems",
        "not",
        "if",
        "then",
        "else",
    }
)


def unenforced_keywords(schema: Any) -> set[str]:
    """The keywords of :data:`UNENFORCED` used anywhere in ``schema`` (not inside
    ``properties`` names, ``const``/``enum`` values, or annotations)."""
    found: set[str] = set()
    if isinstance(schema, list):
        for item in schema:
            found |= unenforced_keywords(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("const", "enum", "default", "examples", "description", "title"):
                continue
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for sub in value.values():
                    found |= unenforced_keywords(sub)
                continue
            if key in UNENFORCED:
                found.add(key)
            found |= unenforced_keywords(value)
    return found


def schema_grammar(model: str, schema: dict[str, Any]) -> str:
    """The GBNF grammar of the JSON that validates against ``schema``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    unenforced = unenforced_keywords(schema)
    if unenforced:
        raise _unsupported(
            model,
            "the JSON schema keyword(s) " + ", ".join(sorted(unenforced)),
            "llama.cpp's grammar cannot enforce them",
        )
    try:
        grammar = str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # noqa: BLE001 - the converter asserts, raises KeyError, ValueError
        raise _unsupported(
            model, "this JSON schema", f"llama.cpp cannot make a grammar of it: {exc}"
        ) from None
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def _unsupported(model: str, what: str, why: str) -> errors.UnsupportedError:
    return errors.UnsupportedError(
        f"model '{model}' does not support {what} on the embedded engine ({why})"
    )
