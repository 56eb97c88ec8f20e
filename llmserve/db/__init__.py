"""Persistence: tables, engine/session factories and the repositories (the only SQL)."""
