"""Who the caller is: the portal's numeric user id, read from what the authorizer vouched for (contract §7).

The user id is the ``user_id`` of MySQL and MongoDB. For a Cognito/JWT authorizer it is the claim named by
``IDENTITY_CLAIM`` (default ``custom:user_id``; Cognito's ``sub`` is a UUID and never the user id); for a
Lambda authorizer it is the context's ``user_id``. Only ASCII decimal digits (at most 10), 1 … 2147483647:
``str.isdigit`` would accept other scripts' digits (``'٣'`` is 3), and ``int`` would accept signs, spaces
and underscores; every such value is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeGuard

MAX_USER_ID: Final = 2_147_483_647
"""MySQL INT, the type of ``bytemark_tokens.user_id``."""

DEFAULT_IDENTITY_CLAIM: Final = "custom:user_id"

_ASCII_DIGITS: Final = frozenset("0123456789")
_MAX_DIGITS: Final = 10


def is_user_id(value: object) -> TypeGuard[int]:
    """True for an int (not a bool) from 1 to MAX_USER_ID."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_USER_ID


def parse_user_id_text(value: object) -> int | None:
    """The user id from an authorizer value: ASCII digits only (or a JSON integer), in range; else None."""
    if is_user_id(value):
        return value
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_DIGITS or not set(value) <= _ASCII_DIGITS:
        return None
    number = int(value)
    return number if is_user_id(number) else None


def caller_id(authorizer: object, identity_claim: str) -> int | None:
    """The authenticated user from ``requestContext.authorizer``; None when there is no usable identity.

    ``claims`` present (Cognito/JWT): the claim named ``identity_claim``; otherwise (a Lambda authorizer):
    ``user_id``. Never anything from the path, query, headers or body.
    """
    if not isinstance(authorizer, Mapping):
        return None
    claims: Any = authorizer.get("claims")
    if claims is not None:
        return parse_user_id_text(claims.get(identity_claim)) if isinstance(claims, Mapping) else None
    return parse_user_id_text(authorizer.get("user_id"))
