"""MySqlTokenStore on the real server (MariaDB locally): lookups, keyset paging, reconnects, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bytemark_cache.adapters.mysql_tokens import MySqlTokenStore
from bytemark_cache.errors import StoreError
from tests.integration.conftest import MySqlConnection

pytestmark = pytest.mark.integration


@pytest.fixture
def mysql_token_store(mysql_connect_args: dict[str, Any], mysql_database: str) -> Iterator[MySqlTokenStore]:
    """The store under test on the session's test database."""
    store = MySqlTokenStore(**mysql_connect_args, database=mysql_database, connect_timeout=5, read_timeout=10)
    try:
        yield store
    finally:
        store.close()


def insert_tokens(admin: MySqlConnection, rows: list[tuple[int, str | None]]) -> None:
    """Insert ``(user_id, token)`` rows."""
    with admin.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO bytemark_tokens (user_id, email, token, status) VALUES (%s, %s, %s, 'ACTIVE')",
            [(user_id, f"u{user_id}@example.test", token) for user_id, token in rows],
        )


def connection_ids(admin: MySqlConnection, database: str) -> set[int]:
    """Ids of the server connections on ``database`` other than ``admin``'s own."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            (database,),
        )
        return {int(row[0]) for row in cursor.fetchall()}


def test_token_for_returns_the_users_token(
    mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection
) -> None:
    insert_tokens(mysql_conn, [(7, "tok-7"), (8, "tok-8"), (9, "  tok-9\n")])

    assert mysql_token_store.token_for(7) == "tok-7"
    assert mysql_token_store.token_for(8) == "tok-8"
    assert mysql_token_store.token_for(9) == "tok-9"  # stray whitespace would break the Authorization header


@pytest.mark.parametrize("token", [None, "", "   "], ids=["null", "empty", "blank"])
def test_token_for_is_none_without_a_usable_token(
    mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection, token: str | None
) -> None:
    insert_tokens(mysql_conn, [(11, token)])

    assert mysql_token_store.token_for(11) is None
    assert mysql_token_store.token_for(12) is None  # no row at all


def test_users_with_token_pages_ascending_without_skips_or_duplicates(
    mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection
) -> None:
    rows: list[tuple[int, str | None]] = []
    expected: list[int] = []
    # Inserted out of order, with users lacking a token interleaved.
    for user_id in sorted(range(1, 200, 3), key=lambda n: (n * 7919) % 211):
        token = None if user_id % 4 == 0 else ("" if user_id % 5 == 0 else f"t{user_id}")
        rows.append((user_id, token))
        if token:
            expected.append(user_id)
    insert_tokens(mysql_conn, rows)
    expected.sort()

    pages = list(mysql_token_store.users_with_token(None, 10))

    assert [user for page in pages for user in page] == expected
    assert all(len(page) == 10 for page in pages[:-1])
    assert 0 < len(pages[-1]) <= 10
    assert len(pages) == -(-len(expected) // 10)

    cursor = pages[1][-1]
    resumed = list(mysql_token_store.users_with_token(cursor, 10))
    assert [user for page in resumed for user in page] == [user for user in expected if user > cursor]


def test_users_with_token_ends_without_an_empty_page(
    mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection
) -> None:
    insert_tokens(mysql_conn, [(user_id, f"t{user_id}") for user_id in range(100, 120)])

    assert list(mysql_token_store.users_with_token(None, 10)) == [
        list(range(100, 110)),
        list(range(110, 120)),
    ]
    assert list(mysql_token_store.users_with_token(119, 10)) == []
    assert list(mysql_token_store.users_with_token(None, 50)) == [list(range(100, 120))]


def test_paging_uses_the_unique_user_id_index(
    mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection
) -> None:
    insert_tokens(mysql_conn, [(user_id, f"t{user_id}") for user_id in range(1, 300)])
    with mysql_conn.cursor() as cursor:
        cursor.execute("ANALYZE TABLE bytemark_tokens")
        cursor.fetchall()
        cursor.execute(
            "EXPLAIN SELECT user_id FROM bytemark_tokens"
            " WHERE user_id > %s AND token IS NOT NULL AND TRIM(token) <> '' ORDER BY user_id LIMIT %s",
            (150, 10),
        )
        columns = [description[0] for description in cursor.description]
        plan = dict(zip(columns, cursor.fetchone(), strict=True))

    assert plan["key"] == "user_id_unique_idx__001"
    assert plan["type"] == "range"
    assert [user for page in mysql_token_store.users_with_token(150, 10) for user in page][:3] == [
        151,
        152,
        153,
    ]


def test_store_reconnects_after_the_server_killed_its_connection(
    mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection, mysql_database: str
) -> None:
    insert_tokens(mysql_conn, [(21, "tok-21")])
    others = connection_ids(mysql_conn, mysql_database)
    assert mysql_token_store.token_for(21) == "tok-21"  # opens the store's (lazy) connection
    (store_connection,) = connection_ids(mysql_conn, mysql_database) - others

    with mysql_conn.cursor() as cursor:
        cursor.execute("KILL CONNECTION %s", (store_connection,))

    assert mysql_token_store.token_for(21) == "tok-21"
    assert list(mysql_token_store.users_with_token(None, 5)) == [[21]]
    (new_connection,) = connection_ids(mysql_conn, mysql_database) - others
    assert new_connection != store_connection


def test_store_reopens_after_close(mysql_token_store: MySqlTokenStore, mysql_conn: MySqlConnection) -> None:
    insert_tokens(mysql_conn, [(31, "tok-31")])
    assert mysql_token_store.token_for(31) == "tok-31"

    mysql_token_store.close()
    mysql_token_store.close()

    assert mysql_token_store.token_for(31) == "tok-31"


def test_wrong_password_is_a_store_error_without_the_password(
    mysql_connect_args: dict[str, Any], mysql_database: str
) -> None:
    settings = {**mysql_connect_args, "password": "wrong-Pa55word-xyz"}
    store = MySqlTokenStore(**settings, database=mysql_database, connect_timeout=3)

    with pytest.raises(StoreError) as caught:
        store.token_for(1)

    assert "wrong-Pa55word-xyz" not in str(caught.value)
    assert "wrong-Pa55word-xyz" not in repr(store)
    assert "1045" in str(caught.value)  # ER_ACCESS_DENIED_ERROR


def test_unreachable_server_is_a_store_error(mysql_database: str) -> None:
    store = MySqlTokenStore("127.0.0.1", 9, "nobody", "secret-pw-123", mysql_database, connect_timeout=2)

    with pytest.raises(StoreError) as caught:
        list(store.users_with_token(None, 10))

    assert "secret-pw-123" not in str(caught.value)


def test_page_size_must_be_positive(mysql_token_store: MySqlTokenStore) -> None:
    with pytest.raises(ValueError, match="page_size"):
        next(mysql_token_store.users_with_token(None, 0))
