"""The faces' shared server fixtures (``tests/_faces.py``)."""

from tests._faces import module_server, server

__all__ = ["module_server", "server"]
