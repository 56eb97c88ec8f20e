"""llmserve: a private, production-grade API server for local large language models."""

__version__ = "0.1.0"
