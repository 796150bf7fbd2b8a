"""Unit tests run without any socket: TCP, UDP and unix sockets are all blocked (pytest-socket).

The block is put in place before the test's fixtures are set up, so a fixture cannot open a connection
either, and a unit test cannot opt out: one that needs a server belongs in tests/integration.
"""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket  # type: ignore[import-untyped]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Block every socket for this unit test (pytest-socket lifts the block at teardown)."""
    fixture_names = getattr(item, "fixturenames", ())
    if item.get_closest_marker("enable_socket") or "socket_enabled" in fixture_names:
        pytest.fail(
            f"{item.nodeid}: unit tests run without sockets; move a test that needs the network to "
            "tests/integration",
            pytrace=False,
        )
    disable_socket(allow_unix_socket=False)
