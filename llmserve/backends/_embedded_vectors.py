"""Embeddings from a loaded GGUF: unit vectors, one per input, from llama.cpp's embedding mode.

The embedding instance (``Engine.load_embedder``) averages the last hidden states of an
input's tokens (mean pooling). Each input is read in one batch of at most
:data:`EMBEDDING_CONTEXT` tokens; a longer one is cut there, as Ollama's ``truncate`` (on by
default) does, and ``prompt_tokens`` counts what was read.

Each input is embedded on its own. Batching short inputs would be faster (measured: eight in
1.4 s instead of 2.4 s), but llama.cpp's numbers then depend on the other inputs of the batch
(cosine 0.9995 to the same text alone), and the vector of a text should not.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from llmserve import errors
from llmserve.domain import Embeddings

#: The most tokens of one input that an embedding reads. llama.cpp computes the logits of
#: *every* token in embedding mode, and Gemma 3 has 262,144 of them: 1 MiB a token, held twice
#: (measured resident size 1.4 GB after a 512-token input, 4.5 GB after 2,048; about 23 ms a
#: token on one thread).
EMBEDDING_CONTEXT = 512


def embed(
    embedder: Any,
    model: str,
    inputs: list[str],
    dimensions: int | None,
    cancelled: threading.Event,
) -> Embeddings:
    """One unit vector per input, in order; ``dimensions`` cuts each vector, which is then
    normalised again (as Ollama does). Stops between two inputs once ``cancelled`` is set."""
    size = int(embedder.n_embd())
    if dimensions is not None and dimensions > size:
        raise errors.UnsupportedError(
            f"model '{model}' does not support {dimensions} dimensions on the embedded engine "
            f"(its vectors have {size})"
        )
    vectors: list[list[float]] = []
    total = 0
    for text in inputs:
        if cancelled.is_set():
            raise errors.BackendError("the embedding was cancelled")
        found, count = embedder.embed([text], return_count=True)  # cut at n_batch tokens
        total += count
        vector = found[0]
        vectors.append(unit(vector[:dimensions] if dimensions is not None else vector))
    return Embeddings(vectors, total)


def unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
