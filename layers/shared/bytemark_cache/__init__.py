"""Bytemark ticket cache: the layer package all three Lambda functions share.

``payload_hash`` and ``day_pass_expiration`` are public API other teams call.
"""

from bytemark_cache.domain.expiry import day_pass_expiration
from bytemark_cache.domain.hashing import payload_hash

__all__ = ["day_pass_expiration", "payload_hash"]
