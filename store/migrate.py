"""Schema migrations: `seriesflow migrate` and the store's refusal to run off head.

The Alembic configuration is built in code with `script_location` set to the installed
`migrations` package, so this works from any working directory and from a wheel.
"""

from __future__ import annotations

import logging

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from seriesflow.logs import configure as configure_logs
from store.config import StoreConfig
from store.database import libpq_url, resolve_url
from store.errors import MIGRATE_HINT, SchemaNotAtHead, translate

_log = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url` that needs no alembic.ini and no particular cwd."""
    config = Config()
    config.set_main_option("script_location", str(migrations.SCRIPT_LOCATION))
    # Passed as an attribute, not a main option: ConfigParser would treat a % in a
    # password as interpolation syntax.
    config.attributes["url"] = url
    return config


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config("")).get_heads())


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current_revisions(url: str) -> set[str]:
    """Revisions recorded in alembic_version; empty for a database never migrated."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
            exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return set()
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return {str(row[0]) for row in rows}


def require_head(url: str) -> None:
    """Raise SchemaNotAtHead unless the database is at the head revision."""
    current = current_revisions(url)
    heads = head_revisions()
    if current != heads:
        shown = ", ".join(sorted(current)) or "no schema (never migrated)"
        raise SchemaNotAtHead(
            f"database schema is at {shown} but this store needs {', '.join(sorted(heads))}; "
            f"{MIGRATE_HINT}"
        )


def main(config: StoreConfig) -> int:
    """Bring the configured (or embedded) database to head. Exit code 0 on success."""
    configure_logs(config.log_level)
    url, stop = resolve_url(config)
    try:
        before = current_revisions(url)
        upgrade(url)
        after = current_revisions(url)
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
