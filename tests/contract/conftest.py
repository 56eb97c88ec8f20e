"""The in-process app fixtures of the integration tests (``client``, ``make_client``, ``keys``)."""

from tests.integration.conftest import client, keys, make_client

__all__ = ["client", "keys", "make_client"]
