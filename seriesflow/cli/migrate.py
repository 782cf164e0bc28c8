"""`seriesflow migrate`: bring the configured (or embedded) database to head."""

from __future__ import annotations

import logging

from seriesflow import migrations
from seriesflow.store.config import StoreConfig
from seriesflow.store.database import resolve_url

_log = logging.getLogger(__name__)


def main(config: StoreConfig) -> int:
    """Migrate to head; 0 on success, 1 (with the reason logged) on failure."""
    try:
        url, stop = resolve_url(config)
    except Exception as exc:  # no URL and no embedded PostgreSQL, or it cannot start
        _log.error("migration failed", extra={"fields": {"error": str(exc)}})
        return 1
    try:
        before = migrations.current_revisions(url)
        migrations.upgrade(url)
        after = migrations.current_revisions(url)
    except Exception as exc:
        _log.error("migration failed", extra={"fields": {"error": str(exc)}})
        return 1
    finally:
        if stop is not None:
            stop()
    _log.info(
        "database schema at head",
        extra={"fields": {"from": sorted(before), "to": sorted(after)}},
    )
    return 0
