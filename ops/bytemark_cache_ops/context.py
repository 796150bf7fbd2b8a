"""What a command may use, each part built on first use (``--help`` and usage errors need nothing).

Tests hand in fakes; otherwise the services come from ``bootstrap.build_services`` (the functions' wiring),
the token store and the maintenance store from the same settings. A configuration problem surfaces when a
command first asks for a part, and is answered like any other error of that command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO

if TYPE_CHECKING:
    from bytemark_cache.adapters.mongo_indexes import IndexFinding, Role
    from bytemark_cache.bootstrap import Services
    from bytemark_cache.config import Settings
    from bytemark_cache.domain.model import CacheDocument, WriteGuard
    from bytemark_cache.ports import TokenStore

_UNUSED_OUTSIDE_MONGODB: Final = {
    "MYSQL_HOST": "unused.invalid",
    "MYSQL_USER": "unused",
    "BYTEMARK_API_URL": "http://unused.invalid",
}
"""Settings ``ensure-indexes`` never uses (a deploy step has only MongoDB's): stand-ins when absent."""


class MaintenanceStore(Protocol):
    """The maintenance commands' MongoDB access (``adapters.mongo_migration.MongoMaintenanceStore``)."""

    collections: dict[Role, str]
    duplicates_collection: str
    migration_log_collection: str

    @property
    def cache_collection(self) -> str:
        """The name of the cache collection."""
        ...

    def estimated_count(self) -> int:
        """About how many cache documents there are."""
        ...

    def scan(self, after: Any, limit: int) -> list[CacheDocument]:
        """Up to ``limit`` cache documents in ``_id`` order after ``after``."""
        ...

    def duplicate_user_ids(self) -> dict[int, int]:
        """``user_id -> documents`` of every user with more than one."""
        ...

    def check_indexes(self) -> list[IndexFinding]:
        """The required indexes as found."""
        ...

    def ensure_indexes(self) -> list[IndexFinding]:
        """Create the missing required indexes."""
        ...

    def copy_aside(self, document: CacheDocument) -> None:
        """Store a moved duplicate verbatim in the side collection."""
        ...

    def delete_guarded(self, guard: WriteGuard) -> bool:
        """Delete a cache document while it is as ``guard`` says."""
        ...

    def record_migration(self, entry: dict[str, Any]) -> None:
        """Write one migration log entry (idempotent by ``_id``)."""
        ...

    def forget_migration(self, entry_id: str) -> None:
        """Delete a migration log entry whose change did not happen."""
        ...


@dataclass
class Context:
    """The command's streams and its lazily built parts."""

    out: TextIO
    err: TextIO
    injected_services: Services | None = None
    injected_tokens: TokenStore | None = None
    injected_maintenance: MaintenanceStore | None = None
    env: Mapping[str, str] | None = None
    check_indexes_at_start: bool = True
    _built: dict[str, Any] = field(default_factory=dict)

    @property
    def services(self) -> Services:
        """The functions' services (built once)."""
        if self.injected_services is not None:
            return self.injected_services
        if "services" not in self._built:
            from bytemark_cache.bootstrap import build_services

            self._built["services"] = build_services(self.settings, check_indexes=self.check_indexes_at_start)
        services: Services = self._built["services"]
        return services

    @property
    def settings(self) -> Settings:
        """Every setting (from the environment and its secrets)."""
        if self.injected_services is not None:
            return self.injected_services.settings
        if "settings" not in self._built:
            from bytemark_cache.bootstrap import load_settings

            self._built["settings"] = load_settings(self.env)
        settings: Settings = self._built["settings"]
        return settings

    def mongodb_settings(self) -> Settings:
        """The settings of a command that uses MongoDB only: the others may be absent."""
        if self.injected_services is not None or "settings" in self._built:
            return self.settings
        from bytemark_cache.bootstrap import load_settings

        source = dict(os.environ if self.env is None else self.env)
        for name, stand_in in _UNUSED_OUTSIDE_MONGODB.items():
            if not source.get(name, "").strip():
                source[name] = stand_in
        return load_settings(source)

    @property
    def tokens(self) -> TokenStore:
        """The token store (MySQL ``bytemark_tokens``)."""
        if self.injected_tokens is not None:
            return self.injected_tokens
        if "tokens" not in self._built:
            from bytemark_cache.bootstrap import mysql_token_store

            self._built["tokens"] = mysql_token_store(self.settings)
        tokens: TokenStore = self._built["tokens"]
        return tokens

    def maintenance(
        self,
        *,
        duplicates_collection: str | None = None,
        migration_log_collection: str | None = None,
        mongodb_only: bool = False,
    ) -> MaintenanceStore:
        """The maintenance store on the settings' database and collections (built once)."""
        if self.injected_maintenance is not None:
            return self.injected_maintenance
        if "maintenance" not in self._built:
            from bytemark_cache.adapters import mongo_migration
            from bytemark_cache.adapters.mongo_store import connect
            from bytemark_cache.bootstrap import indexed_collections

            settings = self.mongodb_settings() if mongodb_only else self.settings
            database = connect(settings.mongodb_uri, settings.mongodb_database)
            self._built["maintenance"] = mongo_migration.MongoMaintenanceStore(
                database,
                indexed_collections(settings),
                duplicates_collection=duplicates_collection or mongo_migration.DEFAULT_DUPLICATES_COLLECTION,
                migration_log_collection=migration_log_collection
                or mongo_migration.DEFAULT_MIGRATION_LOG_COLLECTION,
            )
        store: MaintenanceStore = self._built["maintenance"]
        return store
