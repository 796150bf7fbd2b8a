"""MySqlTokenStore: users' Bytemark OAuth tokens from the portal's ``bytemark_tokens`` table (contract §3).

One lazily opened pymysql connection per instance (one per Lambda execution environment), pinged
before each use and replaced when dead, because a frozen sandbox finds its connection closed by the server's
``wait_timeout``. pymysql connections are not thread-safe, so queries are serialised with a lock: the
records of one SQS batch sync on a thread pool and each reads one short row.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Final

import pymysql
import pymysql.cursors
from pymysql.connections import Connection

from bytemark_cache.errors import StoreError

_CONNECTION_LOST: Final = frozenset({2006, 2013, 2055})
"""CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED: worth one reconnect and retry."""

_TOKEN_QUERY: Final = "SELECT token FROM bytemark_tokens WHERE user_id = %s LIMIT 1"  # noqa: S105 - SQL, not a secret
_FIRST_PAGE_QUERY: Final = (
    "SELECT user_id FROM bytemark_tokens"
    " WHERE token IS NOT NULL AND TRIM(token) <> ''"
    " ORDER BY user_id LIMIT %s"
)
_NEXT_PAGE_QUERY: Final = (
    "SELECT user_id FROM bytemark_tokens"
    " WHERE user_id > %s AND token IS NOT NULL AND TRIM(token) <> ''"
    " ORDER BY user_id LIMIT %s"
)


class MySqlTokenStore:
    """TokenStore on MySQL/MariaDB: parameterised reads over one autocommit connection."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        *,
        connect_timeout: int = 5,
        read_timeout: float = 10,
    ) -> None:
        # pymysql.connect's arguments, kept together (the password never leaves them).
        self._connect_args: dict[str, Any] = {
            "host": host, "port": port, "user": user, "password": password, "database": database,
            "connect_timeout": connect_timeout, "read_timeout": read_timeout, "write_timeout": read_timeout,
        }  # fmt: skip
        self._where = f"{host}:{port}/{database}"
        self._connection: Connection[pymysql.cursors.Cursor] | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        # Never show the password.
        return f"MySqlTokenStore({self._where!r})"

    def token_for(self, user_id: int) -> str | None:
        """The user's token (surrounding whitespace removed), or None when absent, NULL, empty or blank."""
        rows = self._query(_TOKEN_QUERY, (user_id,))
        if not rows:
            return None
        token = rows[0][0]
        if isinstance(token, bytes | bytearray):
            # A binary collation returns bytes.
            token = bytes(token).decode("utf-8", errors="replace")
        if not isinstance(token, str):
            return None
        token = token.strip()
        return token or None

    def users_with_token(self, after_user_id: int | None, page_size: int) -> Iterator[list[int]]:
        """Ascending pages of user ids with a non-empty token, strictly after ``after_user_id`` (keyset).

        Each page is one indexed range query (``user_id > last seen``), so a run can resume from any
        cursor and rows added or removed meanwhile never shift the pages.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        cursor = after_user_id
        while True:
            if cursor is None:
                rows = self._query(_FIRST_PAGE_QUERY, (page_size,))
            else:
                rows = self._query(_NEXT_PAGE_QUERY, (cursor, page_size))
            page = [int(row[0]) for row in rows]
            if page:
                yield page
            if len(page) < page_size:
                return
            cursor = page[-1]

    def close(self) -> None:
        """Close the connection if one is open (the next call opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None and connection.open:
            # Closing a connection the server already dropped: nothing left to release.
            with contextlib.suppress(pymysql.MySQLError):
                connection.close()

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one read; a connection lost mid-query is reopened and the (idempotent) read tried once more."""
        with self._lock:
            return self._query_locked(sql, args)

    def _query_locked(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        for attempt in (1, 2):
            try:
                with self._connect().cursor() as cursor:
                    cursor.execute(sql, args)
                    return list(cursor.fetchall())
            except pymysql.OperationalError as exc:
                if attempt == 1 and _error_code(exc) in _CONNECTION_LOST:
                    self.close()
                    continue
                raise self._store_error(exc) from exc
            except pymysql.MySQLError as exc:
                raise self._store_error(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> Connection[pymysql.cursors.Cursor]:
        if self._connection is not None:
            try:
                # A frozen sandbox finds its connection closed by the server's wait_timeout: a cheap ping
                # tells, and a dead connection is replaced (PyMySQL 1.2 deprecates ping(reconnect=True)).
                self._connection.ping()
            except pymysql.MySQLError:
                self.close()
        if self._connection is None:
            self._connection = pymysql.connect(**self._connect_args, autocommit=True, charset="utf8mb4")
        return self._connection

    def _store_error(self, exc: pymysql.MySQLError) -> StoreError:
        # pymysql's messages name the user and host, never the password; repeat only code and text.
        code = _error_code(exc)
        detail = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        return StoreError(
            f"MySQL {self._where} failed: "
            f"{type(exc).__name__} ({code if code is not None else 'no code'}): {detail[:300]}"
        )


def _error_code(exc: pymysql.MySQLError) -> int | None:
    """The MySQL/client error number of a pymysql error, if it has one."""
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None
