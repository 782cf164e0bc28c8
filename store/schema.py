"""The store's refusal to serve a database whose schema is not at head.

The store does not run migrations and does not import them: its entry point hands it the
head revisions (`seriesflow.migrations.head_revisions()`), and this compares them with the
revisions recorded in the database's `alembic_version` table.
"""

from __future__ import annotations

from collections.abc import Set

import psycopg

from seriesflow.dbencoding import encoding_problem
from seriesflow.store.database import libpq_url
from seriesflow.store.errors import MIGRATE_HINT, DatabaseFault, SchemaNotAtHead, translate


def recorded_revisions(url: str) -> frozenset[str]:
    """Revisions recorded in alembic_version; empty for a database never migrated."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
            problem = encoding_problem(conn)
            if problem is not None:
                raise DatabaseFault(problem)
            exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return frozenset()
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return frozenset(str(row[0]) for row in rows)


def require_head(url: str, heads: Set[str]) -> None:
    """Raise SchemaNotAtHead unless the database is at exactly `heads`."""
    current = recorded_revisions(url)
    if current != heads:
        shown = ", ".join(sorted(current)) or "no schema (never migrated)"
        raise SchemaNotAtHead(
            f"database schema is at {shown} but this store needs {', '.join(sorted(heads))}; "
            f"{MIGRATE_HINT}"
        )
