"""LLM backends: one protocol (``base.Backend``), one implementation per engine."""
