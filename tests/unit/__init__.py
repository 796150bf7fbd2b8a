"""Unit tests: pure logic and in-memory fakes; every socket is blocked (see conftest.py)."""
