"""The HTTP calls Open WebUI, Continue and Cline make to an Ollama server, read from their source.

Data for ``test_ollama_client_replays.py``. Each :class:`Sequence` is one moment of one client
(start-up, a chat turn, an admin action) and says, in a comment, the files it was read from:
repository, path and commit. Bodies hold the fields those clients really send, in their order;
where a field depends on the user's settings, the comment says so and a typical value is used.
Each :class:`Call` also says what the client *reads* from the answer, as a JSON schema
(``answer`` for one JSON object; ``each_line`` / ``last_line`` for an NDJSON stream), and
``checks`` names the parsing the client does beyond the shape (its regexes, its date parsing).

How each client sends its key (``Call.key``):

* ``"if_key"``: ``Authorization: Bearer <key>`` only when the user configured one;
* ``"always"``: ``Authorization: Bearer <key>`` even when the key is empty (``"Bearer "``);
* ``"never"``: no ``Authorization`` header at all, even when a key is configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: The models these sequences name (the replay test installs them in the Ollama double).
LLAMA = "llama3.2"
VISION_MODEL = "llava:7b"
EMBEDDING_MODEL = "all-minilm"
PULLED_MODEL = "smollm:135m"
DELETED_MODEL = "qwen2.5:0.5b"

#: Stands for the id of the first tool call in the previous answer (the client sends it back).
PREVIOUS_CALL_ID = "<id of the previous answer's tool call>"

#: A 1x1 PNG, base64: what a client attaches to a user message.
IMAGE_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
    "AAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

Key = Literal["if_key", "always", "never"]


@dataclass(frozen=True)
class ToolCallScript:
    """What the model does at this step: call ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Call:
    what: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    key: Key = "if_key"
    #: The client reads an NDJSON stream (``True``) or one JSON object (``False``).
    stream: bool = False
    answer: dict[str, Any] | None = None
    each_line: dict[str, Any] | None = None
    last_line: dict[str, Any] | None = None
    checks: tuple[str, ...] = ()
    model_calls: ToolCallScript | None = None


@dataclass(frozen=True)
class Sequence:
    client: str
    moment: Literal["start-up", "chat", "admin"]
    calls: tuple[Call, ...]

    @property
    def id(self) -> str:
        return f"{self.client}-{self.moment}"


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """A JSON schema: an object with these required properties (and these optional ones)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
BOOL = {"type": "boolean"}
OBJECT = {"type": "object"}
DONE = _obj({"done": {"const": True}})
TOOL_CALL = _obj({"function": _obj({"name": STRING, "arguments": OBJECT})}, id=STRING)


def _models(**item: Any) -> dict[str, Any]:
    return _obj({"models": {"type": "array", "minItems": 1, "items": _obj(item)}})


# ------------------------------------------------------------------------------------------------
# Open WebUI
#   open-webui/open-webui backend/open_webui/routers/ollama.py
#       @ 598282cf75de358215d045c617e70d28bc48929e
#     send_get_request / send_post_request: headers Content-Type: application/json and
#       Authorization: Bearer <key> only `if key`; get_ollama_versions parses "version" with
#       re.sub(r"^v|-.*", "", v).split(".") as ints (the lowest across servers wins);
#       get_all_models merges /api/tags by models[].model, then reads /api/ps models[].model and
#       expires_at (datetime.fromisoformat); generate_chat_completion adds ":latest" to a model
#       without a tag, keeps role/content/tool_calls/images of each message and streams the
#       NDJSON back as it comes (content type application/x-ndjson); unload_model is
#       /api/generate with {"model", "keep_alive": 0, "prompt": ""}, stream false; pull_model
#       adds "insecure": true; delete_model sends a JSON body on DELETE and only checks the status.
#   open-webui/open-webui backend/open_webui/utils/payload.py
#       @ 227ce3f63e9eabf4cbdff5f13be7967a869e0d91
#     convert_payload_openai_to_ollama: {"model", "messages", "stream", "options"?...};
#     apply_model_params_to_body_ollama moves the model's advanced parameters (num_ctx,
#     temperature, ...) into "options" and keep_alive/format/think to the top level;
#     convert_messages_openai_to_ollama turns an image_url data URL into "images": [base64].
#   open-webui/open-webui backend/open_webui/retrieval/utils.py
#       @ 60b8cfb9fa2228eac878c3c52eccdff7abc4d384
#     generate_ollama_batch_embeddings: POST /api/embed {"input": [...], "model"} with
#       Authorization: Bearer <key> always, even with an empty key; reads "embeddings".
#   open-webui/open-webui backend/open_webui/routers/tasks.py
#       @ 884bb3f44c64c3d3660b443bd2769b2486cb02bc
#     generate_title: one user message, "stream": False (its top-level max_tokens is not one of
#       the fields convert_payload_openai_to_ollama keeps).
#   open-webui/open-webui backend/open_webui/utils/response.py
#       @ b899de37951fd58e909472741b71e77bb2bddba8
#     convert_streaming_response_ollama_to_openai reads each line's model, message.content, done.
# ------------------------------------------------------------------------------------------------

OPEN_WEBUI_LINE = _obj({"model": STRING, "message": _obj({"content": STRING}), "done": BOOL})

OPEN_WEBUI = (
    Sequence(
        "open-webui",
        "start-up",
        (
            Call(
                "verify the connection, then show the lowest version",
                "GET",
                "/api/version",
                answer=_obj({"version": STRING}),
                checks=("open_webui_version",),
            ),
            Call("list the models", "GET", "/api/tags", answer=_models(name=STRING, model=STRING)),
            Call(
                "mark the loaded models with their expiry",
                "GET",
                "/api/ps",
                answer=_obj({"models": {"type": "array", "items": _obj({"model": STRING})}}),
                checks=("open_webui_expires_at",),
            ),
        ),
    ),
    Sequence(
        "open-webui",
        "chat",
        (
            Call(
                "a chat turn; options and keep_alive come from the model's advanced parameters",
                "POST",
                "/api/chat",
                {
                    "model": f"{LLAMA}:latest",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "Why is the sky blue?"},
                    ],
                    "stream": True,
                    "options": {"temperature": 0.8, "num_ctx": 4096},
                    "keep_alive": "5m",
                },
                stream=True,
                each_line=OPEN_WEBUI_LINE,
                last_line=DONE,
            ),
            Call(
                "the title of the chat, asked for as one answer",
                "POST",
                "/api/chat",
                {
                    "model": f"{LLAMA}:latest",
                    "messages": [
                        {"role": "user", "content": "### Task:\nGenerate a concise title."}
                    ],
                    "stream": False,
                },
                answer=_obj({"message": _obj({"content": STRING}), "done": {"const": True}}),
            ),
            Call(
                "a user message with an attached image",
                "POST",
                "/api/chat",
                {
                    "model": VISION_MODEL,
                    "messages": [
                        {"role": "user", "content": "What is in it?", "images": [IMAGE_B64]}
                    ],
                    "stream": True,
                },
                stream=True,
                each_line=OPEN_WEBUI_LINE,
                last_line=DONE,
            ),
            Call(
                "embed document chunks for retrieval (RAG)",
                "POST",
                "/api/embed",
                {"input": ["First chunk.", "Second chunk."], "model": EMBEDDING_MODEL},
                key="always",
                answer=_obj(
                    {
                        "embeddings": {
                            "type": "array",
                            "minItems": 2,
                            "items": {"type": "array", "minItems": 1, "items": NUMBER},
                        }
                    }
                ),
            ),
        ),
    ),
    Sequence(
        "open-webui",
        "admin",
        (
            Call(
                "pull a model (the admin page streams the progress)",
                "POST",
                "/api/pull",
                {"model": PULLED_MODEL, "insecure": True},
                stream=True,
                each_line=_obj({"status": STRING}),
                last_line=_obj({"status": {"const": "success"}}),
            ),
            Call(
                "unload a model",
                "POST",
                "/api/generate",
                {"model": f"{LLAMA}:latest", "keep_alive": 0, "prompt": ""},
                answer=_obj({"done": {"const": True}, "done_reason": {"const": "unload"}}),
            ),
            Call("delete a model", "DELETE", "/api/delete", {"model": DELETED_MODEL}),
        ),
    ),
)


# ------------------------------------------------------------------------------------------------
# Continue
#   continuedev/continue core/llm/llms/Ollama.ts @ d0a3c0b626b5bebc3bef4742eec05a0242be0bab
#     Every call: headers Content-Type: application/json and Authorization: Bearer <apiKey> if
#       set. listModels (model "AUTODETECT"): GET /api/tags, reads models[].name.
#     ensureModelInfo, once per model before its first request: POST /api/show {"name": model};
#       a non-200 is ignored; reads "parameters" line by line with
#       /^(\S+)\s+((?:".*")|\S+)$/ (num_ctx sets the context length, stop values are
#       JSON.parse'd into the stop list) and "template" (".Suffix" in it means fill-in-the-middle).
#     _streamChat: POST /api/chat {"model", "messages", "options", "think"?, "keep_alive": 1800,
#       "stream"?, "tools"?} (JSON.stringify drops the undefined fields: no "stream" means
#       Ollama's default, a stream); options are num_predict (maxTokens, 4096 by default in
#       core/llm/constants.ts), stop (from /api/show) and num_ctx (8192 unless /api/show or the
#       config says otherwise); tools are sent when the last message is the user's. Assistant
#       tool calls go back as {"function": {"name", "arguments": object}} (no id, no index), a
#       tool result as {"role": "tool", "content"} (no tool_name). Reads each line's "error",
#       message.role (throws on "tool"), content, thinking, tool_calls[].function.{name,arguments}.
#     _streamComplete (autocomplete when the template has no .Suffix; CompletionStreamer.ts
#       passes raw: true): POST /api/generate {"model", "prompt", "raw": true, "options",
#       "keep_alive": 1800}; reads each line's "error" and "response".
#     _embed: POST /api/embed {"model", "input": [chunks]}; reads "embeddings" (non-empty).
#   continuedev/continue core/autocomplete/generation/CompletionStreamer.ts (same commit): raw.
# ------------------------------------------------------------------------------------------------

CONTINUE_OPTIONS = {"num_predict": 4096, "stop": ["<|eot_id|>"], "num_ctx": 8192}
CONTINUE_LINE = _obj(
    {
        "message": _obj(
            {"role": {"const": "assistant"}, "content": STRING},
            thinking=STRING,
            tool_calls={"type": "array", "items": TOOL_CALL},
        )
    }
)
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read the contents of a file in the workspace.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "Relative path."}},
            "required": ["path"],
        },
    },
}
CONTINUE_HISTORY = [
    {"role": "system", "content": "You are a coding assistant."},
    {"role": "user", "content": "What does src/main.ts export?"},
]

CONTINUE = (
    Sequence(
        "continue",
        "start-up",
        (Call("list the models (AUTODETECT)", "GET", "/api/tags", answer=_models(name=STRING)),),
    ),
    Sequence(
        "continue",
        "chat",
        (
            Call(
                "learn the model's context length, stop words and template",
                "POST",
                "/api/show",
                {"name": LLAMA},
                answer=_obj({"parameters": STRING, "template": STRING}),
                checks=("continue_parameters",),
            ),
            Call(
                "a chat turn that offers a tool; the model calls it",
                "POST",
                "/api/chat",
                {
                    "model": LLAMA,
                    "messages": CONTINUE_HISTORY,
                    "options": CONTINUE_OPTIONS,
                    "keep_alive": 1800,
                    "tools": [READ_FILE],
                },
                stream=True,
                each_line=CONTINUE_LINE,
                last_line=DONE,
                model_calls=ToolCallScript("read_file", {"path": "src/main.ts"}),
            ),
            Call(
                "the tool's result goes back (tools are only sent after a user message)",
                "POST",
                "/api/chat",
                {
                    "model": LLAMA,
                    "messages": [
                        *CONTINUE_HISTORY,
                        {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [
                                {
                                    "function": {
                                        "name": "read_file",
                                        "arguments": {"path": "src/main.ts"},
                                    }
                                }
                            ],
                        },
                        {"role": "tool", "content": "export const answer = 42;"},
                    ],
                    "options": CONTINUE_OPTIONS,
                    "keep_alive": 1800,
                },
                stream=True,
                each_line=CONTINUE_LINE,
                last_line=DONE,
            ),
            Call(
                "autocomplete: the template has no .Suffix, so a raw prompt",
                "POST",
                "/api/generate",
                {
                    "model": LLAMA,
                    "prompt": "function add(a, b) {\n  return ",
                    "raw": True,
                    "options": CONTINUE_OPTIONS,
                    "keep_alive": 1800,
                },
                stream=True,
                each_line=_obj({"response": STRING}),
                last_line=DONE,
            ),
            Call(
                "index the codebase",
                "POST",
                "/api/embed",
                {"model": EMBEDDING_MODEL, "input": ["def a(): pass", "def b(): pass"]},
                answer=_obj({"embeddings": {"type": "array", "minItems": 2}}),
            ),
        ),
    ),
)


# ------------------------------------------------------------------------------------------------
# Cline
#   cline/cline apps/vscode/src/core/controller/models/getOllamaModels.ts
#       @ 21cb8d2525bcedf1f4b6890b27a74a14fe7451e4
#     The settings' model picker: axios.get(`${baseUrl}/api/tags`, getAxiosSettings()) with no
#       Authorization header, even when an API key is configured; reads models[].name (sorted,
#       deduplicated); any error gives an empty list.
#   cline/cline sdk/packages/llms/src/providers/vendors/ollama.ts (same commit)
#     Chat through ollama-ai-provider-v2 (4.0.1, patched by
#       patches/ollama-ai-provider-v2@4.0.1.patch): POST <base>/api/chat, headers
#       Authorization: Bearer <apiKey> when set; "think" omitted when unset; tool results carry
#       tool_call_id and tool_name. sdk/packages/llms/src/providers/routing/
#       provider-option-rules.ts sends options {"num_ctx": contextWindow} (32768 by default,
#       OLLAMA_DEFAULT_CONTEXT_WINDOW in providers/builtins.ts).
#   nordwestt/ollama-ai-provider-v2 src/responses/ollama-responses-request-builder.ts,
#       src/adaptors/convert-to-ollama-chat-messages.ts, src/responses/ollama-responses-processor.ts
#       @ 0a8689ee250b417c07ad393b5cff7b876abdb1d2 (3.5.1; Cline pins 4.0.1 and patches it)
#     Body {"model", "messages", "options", "tools"?, "stream": true} (temperature/top_p and
#       max_output_tokens are sent at the top level when set: Ollama ignores them). Assistant
#       tool calls go back as {"id", "type": "function", "function": {"name", "arguments":
#       object}}. Each NDJSON line must parse as {model: string, created_at: string, done: bool,
#       message: {content: string, role: string, thinking?, tool_calls?: [{function: {name,
#       arguments: object}, id?}]}, done_reason?, *_count?, *_duration?}: a line that does not
#       is dropped without a word.
# ------------------------------------------------------------------------------------------------

CLINE_LINE = _obj(
    {
        "model": STRING,
        "created_at": STRING,
        "done": BOOL,
        "message": _obj(
            {"content": STRING, "role": STRING},
            thinking=STRING,
            tool_calls={"type": "array", "items": TOOL_CALL},
        ),
    },
    done_reason=STRING,
    eval_count=NUMBER,
    prompt_eval_count=NUMBER,
    total_duration=NUMBER,
)
CLINE_HISTORY = [
    {"role": "system", "content": "You are Cline, a software engineer."},
    {"role": "user", "content": "Read src/main.ts"},
]
CLINE_OPTIONS = {"num_ctx": 32768}

CLINE = (
    Sequence(
        "cline",
        "start-up",
        (
            Call(
                "the settings' model picker",
                "GET",
                "/api/tags",
                key="never",
                answer=_models(name=STRING),
            ),
        ),
    ),
    Sequence(
        "cline",
        "chat",
        (
            Call(
                "a task starts; the model calls a tool",
                "POST",
                "/api/chat",
                {
                    "model": LLAMA,
                    "messages": CLINE_HISTORY,
                    "options": CLINE_OPTIONS,
                    "tools": [READ_FILE],
                    "stream": True,
                },
                stream=True,
                each_line=CLINE_LINE,
                last_line=DONE,
                model_calls=ToolCallScript("read_file", {"path": "src/main.ts"}),
            ),
            Call(
                "the tool's result goes back with the call's id and the tool's name",
                "POST",
                "/api/chat",
                {
                    "model": LLAMA,
                    "messages": [
                        *CLINE_HISTORY,
                        {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [
                                {
                                    "id": PREVIOUS_CALL_ID,
                                    "type": "function",
                                    "function": {
                                        "name": "read_file",
                                        "arguments": {"path": "src/main.ts"},
                                    },
                                }
                            ],
                        },
                        {
                            "role": "tool",
                            "tool_call_id": PREVIOUS_CALL_ID,
                            "tool_name": "read_file",
                            "content": "export const answer = 42;",
                        },
                    ],
                    "options": CLINE_OPTIONS,
                    "tools": [READ_FILE],
                    "stream": True,
                },
                stream=True,
                each_line=CLINE_LINE,
                last_line=DONE,
            ),
        ),
    ),
)

SEQUENCES: tuple[Sequence, ...] = (*OPEN_WEBUI, *CONTINUE, *CLINE)
