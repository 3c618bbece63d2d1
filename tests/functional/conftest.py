"""Fixtures for the functional tests that run real servers (see tests/servers.py)."""

from servers import portal_instance, portal_server

__all__ = ["portal_instance", "portal_server"]
