"""The installed ``bytemark-cache`` console script as a subprocess: help without configuration, config errors.

These need no server: they check the entry point, the lazy wiring and the exit codes a shell script sees.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.console import console

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 60


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script run with exactly ``env`` plus PATH, within ``TIMEOUT_SECONDS``."""
    return console(*args, env=env, timeout=TIMEOUT_SECONDS)


def test_help_works_without_any_configuration() -> None:
    result = cli("--help", env={})

    assert result.returncode == 0, result.stderr
    for command in ("show", "sync", "log", "backfill", "doctor", "migrate", "ensure-indexes"):
        assert command in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("backfill", ("--mode {due,missing,stale,prune}", "--dry-run", "--cursor N")),
        ("sync", ("--timeout SECONDS",)),
        ("doctor", ("--max-bytes N", "--token-scan-limit N", "--batch-size N")),
        ("migrate", ("--apply", "--after ID", "--batch-size N", "--duplicates-collection NAME")),
        ("ensure-indexes", ("--json",)),
    ],
)
def test_command_help_works_without_any_configuration(command: str, options: tuple[str, ...]) -> None:
    result = cli(command, "--help", env={})

    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout


def test_ensure_indexes_asks_only_for_the_mongodb_settings() -> None:
    result = cli("ensure-indexes", env={"MYSQL_PASSWORD": "not-shown"})

    assert result.returncode == 5
    assert result.stderr == "bytemark-cache: error: configuration error: MONGODB_URI is required\n"


def test_missing_settings_exit_5_naming_every_one() -> None:
    result = cli("show", "42", env={"MYSQL_PASSWORD": "not-shown", "BYTEMARK_PAGE_SIZE": "many"})

    assert result.returncode == 5
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("bytemark-cache: error: configuration error: ") for line in lines), lines
    for name in ("MONGODB_URI", "MYSQL_HOST", "MYSQL_USER", "BYTEMARK_API_URL", "BYTEMARK_PAGE_SIZE"):
        assert any(name in line for line in lines), name
    assert "not-shown" not in result.stderr


def test_a_malformed_secret_setting_is_named_but_not_echoed() -> None:
    env = {
        "MONGODB_URI": "http://btc_app:hunter2@db.internal/",
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_USER": "app",
        "BYTEMARK_API_URL": "http://127.0.0.1:1",
    }

    result = cli("sync", "42", env=env)

    assert result.returncode == 5
    assert result.stderr.count("\n") == 1
    assert "MONGODB_URI" in result.stderr
    assert "hunter2" not in result.stderr


def test_usage_error_exits_2_before_reading_configuration() -> None:
    result = cli("backfill", "--mode", "everyone", env={})

    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "configuration" not in result.stderr
