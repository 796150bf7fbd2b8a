"""The use cases: reads and syncs of one user (``tickets``) and the scheduled back-fill (``backfill``)."""

from bytemark_cache.services.backfill import BackfillResult, BackfillService
from bytemark_cache.services.tickets import CheckResult, TicketCacheService

__all__ = ["BackfillResult", "BackfillService", "CheckResult", "TicketCacheService"]
