"""``python -m llama_cpp.server``, loading the model the way the embedded backend does.

llama-cpp-python's server has no switch for llama.cpp's extra buffer types, whose AMX kernels
die with SIGILL on this CI machine's virtual CPU (see ``extra_buffer_types``); everything else,
arguments included, is the unmodified server.
"""

from __future__ import annotations

import runpy

from llmserve.backends._embedded_engine import extra_buffer_types

if __name__ == "__main__":
    with extra_buffer_types():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
