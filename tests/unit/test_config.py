"""Settings.from_env: defaults, and every problem reported at once."""

from __future__ import annotations

import pytest

from bytemark_cache.config import Settings
from bytemark_cache.errors import ConfigError
from tests.fakes import LOCAL_TEST_ENV


def test_defaults_fill_what_is_optional() -> None:
    settings = Settings.from_env(LOCAL_TEST_ENV)

    assert settings.cache_ttl_seconds == 3600
    assert settings.mongodb_database == "cache"
    assert settings.cache_collection == "BytemarkTicketsCache"
    assert settings.log_collection == "BytemarkTicketsLog"
    assert settings.agency_timezone == "America/Chicago"
    assert settings.mysql_database == "portal"


def test_every_problem_is_named_in_one_error() -> None:
    env = {
        "MONGODB_URI": "http://not-mongo",
        "MYSQL_PORT": "99999",
        "BYTEMARK_API_URL": "ftp://x",
        "CACHE_TTL_SECONDS": "soon",
        "AGENCY_TIMEZONE": "Mars/Olympus",
        "PASSES4_LIMIT": "0",
    }

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    message = str(caught.value)
    for name in (
        "MONGODB_URI",
        "MYSQL_HOST is required",
        "MYSQL_USER is required",
        "MYSQL_PORT",
        "BYTEMARK_API_URL",
        "CACHE_TTL_SECONDS",
        "AGENCY_TIMEZONE",
        "PASSES4_LIMIT",
    ):
        assert name in message
    assert len(caught.value.problems) == 8


def test_secrets_never_appear_in_errors_or_repr() -> None:
    env = {**LOCAL_TEST_ENV, "MONGODB_URI": "mongodb://user:hunter2@db/", "MYSQL_PASSWORD": "hunter2"}

    assert "hunter2" not in repr(Settings.from_env(env))
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "MONGODB_URI": "hunter2"})
    assert "hunter2" not in str(caught.value)
